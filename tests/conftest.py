"""Shared test setup: the repository root loaded as a package under a fixed alias.

ComfyUI imports the pack folder as a package named after the folder, so the pack only uses relative imports.
Tests do the same under the alias ``easyanimate_pack``: node tests write ``from easyanimate_pack.nodes import ...``.
Core tests import ``easyanimate_core`` directly (the repository root is on ``sys.path`` through pytest's
``pythonpath`` setting). Nothing heavy happens here.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_ALIAS = "easyanimate_pack"


def load_pack(name: str = PACK_ALIAS, root: Path = REPO_ROOT):
    """Import the pack folder ``root`` as the package ``name`` (as ComfyUI does) and return the module."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


load_pack()

# EasyAnimate Sampler without its speed options: every step computed, both passes.
EXACT = dict(teacache_threshold=0.0, teacache_start_steps=1, teacache_end_steps=1, cfg_skip_ratio=0.0)


def run_node(node, **inputs):
    """A node of ours (by id) or of ComfyUI (a class, V1 or V3), called through its declared function."""
    cls = load_pack().NODE_CLASS_MAPPINGS[node] if isinstance(node, str) else node
    if hasattr(cls, "FUNCTION"):
        return getattr(cls(), cls.FUNCTION)(**inputs)
    return cls.execute(**inputs).result


def load_demo(name: str):
    """EasyAnimate Model Loader on a demo folder: fp32, model offload, default weights."""
    return run_node("EasyAnimateModelLoader", model=name, precision="fp32", memory_mode="model_cpu_offload",
                    blocks_on_gpu=-1, weight_dtype="default")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The V5.1 demo model folders of every variant, written once per test module (a module may define its own)."""
    from easyanimate_core.demo import write_demo_model

    root = tmp_path_factory.mktemp("models")
    return {variant: write_demo_model(root / f"demo-{variant}", variant=variant)
            for variant in ("t2v", "inp", "control", "camera")}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Paths of a 48x32 start image, a 7-frame 48x32 video and a one-track trajectory JSON."""
    import json

    import torch

    from easyanimate_core.video import write_mp4, write_png

    root = tmp_path_factory.mktemp("media")
    gen = torch.Generator().manual_seed(0)
    image = write_png(root / "start.png", torch.rand(32, 48, 3, generator=gen))
    video = write_mp4(root / "input.mp4", torch.rand(7, 32, 48, 3, generator=gen))
    track = root / "track.json"
    track.write_text(json.dumps({"version": 1, "canvas": {"width": 48, "height": 32},
                                 "tracks": [{"points": [[0.1, 0.2], [0.5, 0.8], [0.9, 0.3]]}]}))
    return {"image": str(image), "video": str(video), "track": str(track)}


@pytest.fixture()
def models_dir(tmp_path):
    """The models/EasyAnimate folder the ``comfyui`` fixture shows ComfyUI; test modules with models override it."""
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture()
def comfyui(monkeypatch, tmp_path, models_dir):
    """The real ComfyUI (tests/comfyui_env.py) with its folders pointed at this test's, recording what the nodes do:
    ``progress`` (value, total, has preview) of every progress-bar update and ``freed`` (bytes asked of
    ``free_memory``). Setting ``interrupt_after`` makes ComfyUI's Cancel fire once a progress update reaches that
    value. Every model is unloaded afterwards, as ComfyUI's "Unload models" does."""
    from comfyui_env import import_comfyui, use_folders

    import_comfyui()
    import comfy.model_management as mm
    import comfy.utils

    record = {"progress": [], "freed": [], "interrupt_after": None}
    record["loras"] = use_folders(monkeypatch, tmp_path, models_dir)

    def hook(value, total, preview, node_id=None):
        record["progress"].append((value, total, preview is not None))
        if record["interrupt_after"] is not None and value >= record["interrupt_after"]:
            mm.interrupt_current_processing(True)

    real_free_memory = mm.free_memory

    def free_memory(memory_required, device, keep_loaded=()):
        record["freed"].append(memory_required)
        return real_free_memory(memory_required, device, keep_loaded)

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", hook)
    monkeypatch.setattr(mm, "free_memory", free_memory)
    yield record
    mm.interrupt_current_processing(False)
    mm.unload_all_models()
