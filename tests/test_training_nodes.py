"""The training nodes inside the real ComfyUI modules: the dataset node, the trainer subprocess streamed into the
progress bar, Cancel stopping it, and the trained LoRA loaded by path."""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import load_pack
from test_training import BAD_ENTRIES, write_dataset

from easyanimate_core.demo import write_demo_model

pack = load_pack()
NODES = pack.NODE_CLASS_MAPPINGS
TRAIN_INPUTS = dict(output_dir="", name="stripes", steps=3, rank=4, alpha=4.0, learning_rate=1e-3, batch_size=1,
                    gradient_accumulation=1, video_size=40, image_size=40, frames=5, mixed_precision="no",
                    gradient_checkpointing=False, fp8_base=False, checkpoint_every=2, seed=3, resume=False,
                    validation_prompts="")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_demo_model(root / "demo-t2v", variant="t2v", seed=0)
    return root


@pytest.fixture(scope="module")
def metadata(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One output folder for every run here, so they share its cache of encoded captions and clips."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture()
def comfy(comfyui, monkeypatch, runs):
    """The real ComfyUI (conftest.py) with its output folder holding ``runs``."""
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(runs.parent))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny matrices: one thread is fastest (see test_training.py)
    return comfyui


def _run(node_id, **inputs):
    node = NODES[node_id]()
    return getattr(node, node.FUNCTION)(**inputs)


def test_the_dataset_node_reads_a_metadata_file_or_a_captioned_folder(comfyui, metadata, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "input_directory", str(metadata.parent))
    dataset, info = _run("EasyAnimateTrainingDataset", path=str(metadata), default_caption="", data_root="")
    assert dataset.data == str(metadata) and dataset.data_root == ""
    assert f"4 of 9 entries usable (3 images, 1 videos), {len(BAD_ENTRIES)} skipped" in info
    assert "missing.mp4: file not found" in info
    # A relative path is read in ComfyUI's input folder, and made absolute: the trainer runs elsewhere.
    (folder_set, info) = _run("EasyAnimateTrainingDataset", path=".", default_caption="stripes", data_root="")
    assert folder_set.data == str(metadata.parent) and "4 of 5 entries usable" in info and "broken.png" in info
    with pytest.raises(ValueError, match="Give the path"):
        _run("EasyAnimateTrainingDataset", path=" ", default_caption="", data_root="")


def test_the_training_node_streams_progress_and_returns_a_loadable_lora(comfy, metadata, models_dir, runs):
    (dataset, _) = _run("EasyAnimateTrainingDataset", path=str(metadata), default_caption="", data_root="")
    assert NODES["EasyAnimateTrainLoRA"].INPUT_TYPES()["required"]["model"][0] == ["demo-t2v"]
    path, log = _run("EasyAnimateTrainLoRA", dataset=dataset, model="demo-t2v",
                     **dict(TRAIN_INPUTS, output_dir=runs.name))
    assert path == str(runs / "stripes" / "stripes.safetensors")
    assert len(list((runs / "cache" / "latents").iterdir())) == 4
    assert [p[:2] for p in comfy["progress"]] == [(1, 3), (2, 3), (3, 3)]
    assert comfy["freed"] and "step 3/3 loss=" in log and log.splitlines()[-1] == f"lora={path}"

    model, _, _, _ = _run("EasyAnimateModelLoader", model="demo-t2v", precision="fp32", memory_mode="full",
                          blocks_on_gpu=-1, weight_dtype="default")
    (with_lora,) = _run("EasyAnimateLoraLoaderFromPath", model=model, lora_path=path, strength=0.8)
    assert model.patches == {} and len(with_lora.patches) == 33
    assert {patch[0] for patches in with_lora.patches.values() for patch in patches} == {0.8}


def test_cancel_stops_the_trainer_and_leaves_no_lora(comfy, metadata, runs, monkeypatch):
    started = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, command, *args, **kwargs):
            super().__init__(command, *args, **kwargs)
            if "train-lora" in command:
                started.append(self)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    (dataset, _) = _run("EasyAnimateTrainingDataset", path=str(metadata), default_caption="", data_root="")
    import comfy.model_management as mm

    comfy["interrupt_after"] = 2
    with pytest.raises(mm.InterruptProcessingException):
        _run("EasyAnimateTrainLoRA", dataset=dataset, model="demo-t2v",
             **dict(TRAIN_INPUTS, output_dir=runs.name, name="cancelled", steps=500))
    (process,) = started
    assert process.returncode == 130  # SIGTERM: the trainer ended at a step boundary by itself
    run = runs / "cancelled"
    assert not (run / "cancelled.safetensors").exists() and not list(run.rglob("*.partial"))
    assert (run / "checkpoints" / "checkpoint-000002" / "lora.safetensors").is_file()
    assert comfy["progress"][-1][0] < 500

    comfy["interrupt_after"] = None
    with pytest.raises(RuntimeError, match="(?s)LoRA training failed.*holds checkpoints of an earlier run"):
        _run("EasyAnimateTrainLoRA", dataset=dataset, model="demo-t2v",
             **dict(TRAIN_INPUTS, output_dir=runs.name, name="cancelled", steps=500))


def test_an_output_dir_outside_comfyui_output_is_refused(comfy, metadata):
    (dataset, _) = _run("EasyAnimateTrainingDataset", path=str(metadata), default_caption="", data_root="")
    for escape in ("../elsewhere", "/etc/easyanimate"):
        with pytest.raises(ValueError, match="leaves ComfyUI's output folder"):
            _run("EasyAnimateTrainLoRA", dataset=dataset, model="demo-t2v", **dict(TRAIN_INPUTS, output_dir=escape))


@pytest.mark.parametrize(("output_dir", "name", "refused"), [
    ("", "..", "name = '..'"), ("", ".", "name = '.'"), ("", "...", "name = '...'"), ("", "", "name = ''"),
    ("", "a/../..", "name = 'a/../..'"), ("", "/tmp/evil", "name = '/tmp/evil'"), ("sub", "..", "name = '..'"),
    ("..", "run", "leaves ComfyUI's output folder"), ("/tmp", "run", "leaves ComfyUI's output folder"),
    ("a/../..", "run", "leaves ComfyUI's output folder"), ("EasyAnimate/../../x", "run", "leaves ComfyUI's output"),
    ("escape", "run", "leaves ComfyUI's output folder"),  # a link inside output/ to a folder outside
])
def test_the_run_folder_must_lie_inside_the_output_folder(comfy, runs, tmp_path, monkeypatch, output_dir, name,
                                                          refused):
    base = runs.parent  # ComfyUI's output folder here
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *args, **kwargs: started.append(args))
    dataset = pack.nodes.training.TrainingDataset(data=str(tmp_path / "metadata.json"), data_root="",
                                                  default_caption="", summary="")
    with tempfile.TemporaryDirectory() as outside:  # /tmp/..., not inside the output folder
        (base / "escape").symlink_to(outside, target_is_directory=True)
        before = sorted(p.name for p in base.parent.iterdir())
        try:
            with pytest.raises(ValueError, match=re.escape(refused)):
                _run("EasyAnimateTrainLoRA", dataset=dataset, model="demo-t2v",
                     **dict(TRAIN_INPUTS, output_dir=output_dir, name=name))
            assert started == [] and list(Path(outside).iterdir()) == []
            assert sorted(p.name for p in base.parent.iterdir()) == before
        finally:
            (base / "escape").unlink()


def test_plain_run_names_resolve_inside_the_output_folder(comfy, runs):
    base = runs.parent.resolve()
    for output_dir, name, run in (("", "my_lora", "my_lora"), (" EasyAnimate/lora ", "v1.2", "EasyAnimate/lora/v1.2"),
                                  ("a/../b", ".hidden", "b/.hidden")):
        assert pack.nodes.training.run_folders(output_dir, name)[1] == base / run


def test_the_validation_videos_take_the_size_and_steps_set_on_the_node(comfy, metadata, runs):
    from easyanimate_core.video import read_video

    (dataset, _) = _run("EasyAnimateTrainingDataset", path=str(metadata), default_caption="", data_root="")
    inputs = dict(TRAIN_INPUTS, output_dir=runs.name, name="validated", steps=1,
                  validation_prompts="orange stripes\n\nmoving stripes")
    path, log = _run("EasyAnimateTrainLoRA", dataset=dataset, model="demo-t2v", **inputs, validation_width=48,
                     validation_height=32, validation_frames=5, validation_steps=2)
    videos = sorted((runs / "validated" / "validation").glob("*.mp4"))
    assert len(videos) == 2  # one per non-empty prompt line
    assert all(read_video(video).shape == (5, 32, 48, 3) for video in videos)
    declared = NODES["EasyAnimateTrainLoRA"].INPUT_TYPES()["optional"]
    assert {name: spec[1]["default"] for name, spec in declared.items()} == {
        "validation_width": 672, "validation_height": 384, "validation_frames": 49, "validation_steps": 25}
