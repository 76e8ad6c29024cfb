"""LoRA training on the demo model and a tiny synthetic dataset written here (32x48 px images, a 9-frame mp4).

Covers the dataset report, buckets, the flow loss, the LoRA layers, a run whose loss goes down, a killed run that
resumes with the same loss curve, the official-format export, and interrupted runs that leave no broken file.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from safetensors import safe_open

from easyanimate_core.demo import write_demo_model
from easyanimate_core.loading import load_transformer, load_vae
from easyanimate_core.lora import applied, read_lora
from easyanimate_core.memory import store_in_fp8
from easyanimate_core.text_encoder import load_text_encoder
from easyanimate_core.training import (
    BucketOptions,
    TrainingConfig,
    TrainingStopped,
    bucket_for,
    checkpoints,
    load_dataset,
    train,
)
from easyanimate_core.training.buckets import BatchSchedule, epoch_batches, frame_indices
from easyanimate_core.training.cache import encode_item, encode_texts
from easyanimate_core.training.layers import gradient_checkpointing, lora_branches, target_linears
from easyanimate_core.training.objective import flow_matching_loss, masked_mse, training_sigmas
from easyanimate_core.video import write_mp4, write_png

TINY = BucketOptions(video_size=40, image_size=40, frames=5, stride=1)
BAD_ENTRIES = [
    {"file_path": "missing.mp4", "text": "gone", "type": "video"},
    {"file_path": "broken.png", "text": "not an image", "type": "image"},
    {"file_path": "a.png"},
    {"file_path": "a.png", "text": "x", "type": "audio"},
    "just a string",
]


def _stripes(height: int, width: int, frames: int, phase: float) -> torch.Tensor:
    """IMAGE [F, H, W, 3]: orange diagonal stripes moving by ``phase`` per frame."""
    y = torch.linspace(0, 1, height)[:, None, None]
    x = torch.linspace(0, 1, width)[None, :, None]
    color = torch.tensor([0.9, 0.4, 0.1])
    return torch.stack([((2 * x + y + 0.15 * (i + phase)) % 1.0) * color + 0.05 for i in range(frames)])


def write_dataset(folder: Path) -> Path:
    """Two landscape images, one portrait image, a 9-frame video, and five bad entries; returns the metadata file."""
    folder.mkdir(parents=True, exist_ok=True)
    write_png(folder / "a.png", _stripes(32, 48, 1, 0)[0])
    write_png(folder / "b.png", _stripes(32, 48, 1, 3)[0])
    write_png(folder / "tall.png", _stripes(48, 32, 1, 1)[0])
    write_mp4(folder / "clip.mp4", _stripes(32, 48, 9, 0))
    (folder / "broken.png").write_bytes(b"not a png")
    entries = [
        {"file_path": "a.png", "text": "orange stripes", "type": "image"},
        {"file_path": "b.png", "text": "orange stripes", "type": "image"},
        {"file_path": "tall.png", "text": "orange stripes, tall", "type": "image"},
        {"file_path": "clip.mp4", "text": "moving orange stripes", "type": "video"},
        *BAD_ENTRIES,
    ]
    (folder / "metadata.json").write_text(json.dumps(entries), encoding="utf-8")
    return folder / "metadata.json"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The matrices here are tiny: thread start-up dominates, and on a busy 2-core machine 2 threads run ~40x
    slower than one. Subprocesses get OMP_NUM_THREADS=1 for the same reason (and the same numerics)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def demo(workdir):
    return write_demo_model(workdir / "demo", variant="t2v", seed=0)


@pytest.fixture(scope="module")
def metadata(workdir):
    return write_dataset(workdir / "data")


def _config(metadata, demo, output: Path, **changes) -> TrainingConfig:
    base = TrainingConfig(data=metadata, model=str(demo), output=output, name="stripes", steps=40, rank=4, alpha=4.0,
                          learning_rate=1e-2, max_grad_norm=1.0, caption_dropout=0.0, checkpoint_every=10,
                          buckets=TINY, cache_dir=output.parent / "cache", save_dtype="float32", seed=7)
    return replace(base, **changes)


def _losses(output: Path) -> list[tuple[int, float]]:
    with (output / "losses.csv").open(encoding="utf-8") as f:
        return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def trained(workdir, metadata, demo):
    config = _config(metadata, demo, workdir / "uninterrupted")
    return config, train(config)


# ---------------------------------------------------------------- dataset and buckets


def test_bad_entries_are_skipped_and_reported(metadata, tmp_path):
    entries, report = load_dataset(metadata)
    assert [e.path.name for e in entries] == ["a.png", "b.png", "tall.png", "clip.mp4"]
    assert [(e.kind, e.width, e.height, e.frames) for e in entries] == [
        ("image", 48, 32, 1), ("image", 48, 32, 1), ("image", 32, 48, 1), ("video", 48, 32, 9)]
    assert (report.total, report.images, report.videos) == (9, 3, 1)
    reasons = {s.index: s.reason for s in report.skipped}
    assert sorted(reasons) == [4, 5, 6, 7, 8]
    assert reasons[4].startswith("file not found") and "missing.mp4" in reasons[4]
    assert "Cannot read an image" in reasons[5]
    assert "no text" in reasons[6] and "type 'audio'" in reasons[7] and "got str" in reasons[8]
    assert "4 of 9 entries usable (3 images, 1 videos), 5 skipped" in report.summary()

    # Relative paths resolve against --data-root when one is given.
    moved = tmp_path / "meta.json"
    moved.write_text(metadata.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ValueError, match="No usable entry.*relative paths resolve against"):
        load_dataset(moved)
    assert len(load_dataset(moved, data_root=metadata.parent)[0]) == 4


def test_a_folder_with_captions_is_a_dataset(tmp_path):
    write_png(tmp_path / "one.png", _stripes(32, 48, 1, 0)[0])
    write_mp4(tmp_path / "two.mp4", _stripes(32, 48, 5, 0))
    (tmp_path / "one.txt").write_text("  a caption \n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    entries, report = load_dataset(tmp_path, default_caption="fallback")
    assert [(e.path.name, e.text, e.kind) for e in entries] == [("one.png", "a caption", "image"),
                                                                  ("two.mp4", "fallback", "video")]
    assert report.skipped == ()


def test_buckets_follow_token_length_and_aspect_ratio(metadata):
    entries, _ = load_dataset(metadata)
    assert [str(bucket_for(e, TINY)) for e in entries] == ["48x32x1", "48x32x1", "32x48x1", "48x32x5"]
    options = BucketOptions()  # the reference: 49 frames at ~512 px, shorter clips and images larger
    long_clip, short_clip, image = (replace(entries[3], width=1920, height=1080, frames=n) for n in (300, 30, 1))
    image = replace(image, kind="image")
    sizes = [bucket_for(e, options) for e in (long_clip, short_clip, image)]
    assert [str(b) for b in sizes] == ["672x384x49", "864x496x29", "1360x768x1"]
    tokens = [((b.frames - 1) // 4 + 1) * b.width * b.height for b in sizes]
    assert tokens[1] / tokens[0] == pytest.approx(1.0, abs=0.03)  # the same token budget for both clips
    assert tokens[2] / 1024 ** 2 == pytest.approx(1.0, abs=0.03)  # images: capped at image_size squared
    small = replace(image, width=64, height=64)
    assert str(bucket_for(small, options)) == "80x80x1"  # never more than 1.25x the source

    window = frame_indices(replace(entries[3], frames=100), 5, 3, None)
    assert window == list(range(43, 56, 3)) and 10 <= window[0] and window[-1] < 90
    assert frame_indices(entries[3], 5, 3, None) == [0, 2, 4, 6, 8]  # stride lowered to fit a short clip


def test_batches_hold_one_bucket_and_their_order_is_a_function_of_seed_and_epoch(metadata):
    entries, _ = load_dataset(metadata)
    buckets = [bucket_for(e, TINY) for e in entries]
    first = epoch_batches(buckets, 2, seed=1, epoch=0)
    assert sorted(i for b in first for i in b) == [0, 1, 2, 3]
    assert all(len({buckets[i] for i in batch}) == 1 for batch in first)
    assert first == epoch_batches(buckets, 2, seed=1, epoch=0)
    assert any(epoch_batches(buckets, 1, seed=1, epoch=e) != epoch_batches(buckets, 1, seed=1, epoch=0)
               for e in range(1, 5))
    two = [BatchSchedule(tuple(buckets), 1, 1, rank, 2) for rank in (0, 1)]
    shares = [[s.micro_batch(m)[1] for m in range(2)] for s in two]
    assert sorted(i for share in shares for batch in share for i in batch) == [0, 1, 2, 3]


# ---------------------------------------------------------------- loss and layers


def test_flow_loss_is_the_reference_objective():
    sigmas = training_sigmas()
    assert sigmas.shape == (1000,) and sigmas[0] == 1.0 and math.isclose(float(sigmas[-1]), 0.001, rel_tol=1e-6)
    seen = {}

    def model(noisy, timestep, text, **extra):
        seen.update(noisy=noisy, timestep=timestep)
        return torch.zeros_like(noisy)

    latents = torch.randn(2, 16, 2, 4, 6)
    loss = flow_matching_loss(model, latents, torch.zeros(2, 3, 8), generator=torch.Generator().manual_seed(5),
                              dtype=torch.float32)
    replay = torch.Generator().manual_seed(5)
    sigma = sigmas[torch.randint(0, 1000, (2,), generator=replay)]
    noise = torch.randn(latents.shape, generator=replay)
    s = sigma.view(2, 1, 1, 1, 1)
    torch.testing.assert_close(seen["timestep"], sigma * 1000)
    torch.testing.assert_close(seen["noisy"], (1 - s) * latents + s * noise)
    torch.testing.assert_close(loss, ((noise - latents) ** 2).mean())
    # Elements further than 50 from the target count as zero (in the mean over all elements).
    prediction, target = torch.tensor([0.0, 1.0, 100.0, 2.0]), torch.zeros(4)
    assert masked_mse(prediction, target).item() == pytest.approx((0 + 1 + 0 + 4) / 4)


def test_lora_branches_start_at_the_base_model_and_add_up_down_scaled(demo):
    transformer = load_transformer(demo, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    inputs = (torch.randn(1, 16, 2, 4, 6, generator=gen), torch.tensor([300.0]), torch.randn(1, 7, 64, generator=gen))
    base = transformer(*inputs)
    names = target_linears(transformer)
    assert len(names) == 33 and "proj_out" in names and "transformer_blocks.1.txt_ff.net.2" in names
    assert target_linears(transformer, [r"attn1\.to_q$"]) == ["transformer_blocks.0.attn1.to_q",
                                                              "transformer_blocks.1.attn1.to_q"]
    with pytest.raises(ValueError, match="match no linear.*names look like"):
        target_linears(transformer, ["to_nothing"])
    with lora_branches(transformer, names, rank=4, alpha=2.0, seed=0) as branches:
        branch = branches["proj_out"]
        bound = 1 / math.sqrt(branch.down.shape[1])  # kaiming-uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in))
        assert branch.down.abs().max() <= bound and branch.down.abs().max() > 0.5 * bound
        assert torch.equal(transformer(*inputs), base)  # up starts at zero
        with torch.no_grad():
            branch.up.normal_(generator=gen)
        linear = transformer.proj_out
        x = torch.randn(3, linear.in_features, generator=gen)
        expected = x @ linear.weight.T + linear.bias + (x @ branch.down.T @ branch.up.T) * (2.0 / 4)
        torch.testing.assert_close(linear(x), expected)
        trainable = {n for n, p in transformer.named_parameters() if p.requires_grad}
        assert trainable == {f"{n}.lora.{part}" for n in names for part in ("down", "up")}
    assert not any(m._forward_hooks for m in transformer.modules())
    assert not any("lora" in name for name, _ in transformer.named_modules())
    assert torch.equal(transformer(*inputs), base)


def test_gradient_checkpointing_gives_the_same_gradients(demo):
    transformer = load_transformer(demo, dtype=torch.float32)
    gen = torch.Generator().manual_seed(4)
    inputs = (torch.randn(1, 16, 2, 4, 6, generator=gen), torch.tensor([700.0]), torch.randn(1, 7, 64, generator=gen))
    grads = []
    for checkpointed in (False, True):
        with lora_branches(transformer, ["transformer_blocks.0.attn1.to_v", "proj_out"], 2, 2.0, seed=1) as branches:
            with torch.no_grad():
                for b in branches.values():
                    b.up.fill_(0.01)
            context = gradient_checkpointing(transformer) if checkpointed else torch.enable_grad()
            with context:
                transformer(*inputs).square().mean().backward()
            grads.append([b.down.grad.clone() for b in branches.values()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(plain, recomputed)
    assert all("forward" not in vars(block) for block in transformer.transformer_blocks)


def test_lora_branches_train_on_fp8_base_weights(demo):
    transformer = store_in_fp8(load_transformer(demo, dtype=torch.bfloat16), "qfloat8")
    modules = dict(transformer.named_modules())
    assert sum(type(m).__name__ == "QLinear" for m in modules.values()) == 24  # per block: 8 attention, 4 ff
    assert type(modules["transformer_blocks.0.attn1.to_q"]).__name__ == "QLinear"
    for name in ("proj_out", "time_embedding.linear_1", "text_proj.1", "norm_out.linear",
                 "transformer_blocks.0.norm1.linear", "proj"):
        assert type(modules[name]).__name__ != "QLinear", name
    with lora_branches(transformer, target_linears(transformer), 2, 2.0) as branches:
        inputs = (torch.randn(1, 16, 2, 4, 6), torch.tensor([500.0]), torch.randn(1, 7, 64))
        transformer(*[x.bfloat16() for x in inputs]).float().square().mean().backward()
        for name in ("transformer_blocks.0.attn1.to_q", "transformer_blocks.1.ff.net.2", "proj_out"):
            assert branches[name].up.grad.abs().sum() > 0, name  # through qfloat8 and bf16 linears alike


# ---------------------------------------------------------------- training runs


def test_the_loss_goes_down_and_the_saved_lora_changes_the_output(trained, demo, metadata):
    config, result = trained
    losses = [loss for _, loss in _losses(config.output)]
    assert len(losses) == 40 and list(result.losses) == pytest.approx(losses, abs=1e-7)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.92 * first, (first, last)

    # The same images, noise and sigmas give a lower loss with the LoRA than without.
    transformer = load_transformer(demo, dtype=torch.float32)
    lora = read_lora(result.lora_path, transformer)
    assert len(lora.layers) == 33
    vae, encoder = load_vae(demo, dtype=torch.float32), load_text_encoder(demo, dtype=torch.float32)
    entries, _ = load_dataset(metadata)
    items = [encode_item(vae, e, bucket_for(e, TINY), [0, 1, 2, 3, 4][:bucket_for(e, TINY).frames],
                         inpaint=False, generator=torch.Generator()) for e in entries]
    texts = encode_texts(encoder, [e.text for e in entries])

    def fixed_loss():
        total = 0.0
        with torch.no_grad():
            for k in range(4):
                for item, text in zip(items, texts):
                    total += flow_matching_loss(transformer, item["mean"][None], text[None], dtype=torch.float32,
                                                generator=torch.Generator().manual_seed(k)).item()
        return total / (4 * len(items))

    without = fixed_loss()
    with applied(transformer, [(lora, 1.0)]):
        with_lora = fixed_loss()
    assert with_lora < 0.9 * without, (without, with_lora)
    assert fixed_loss() == without  # nothing of the model changed


def _official_module(root, layer: str):
    """The name resolution of merge_lora in aigc-apps/EasyAnimate (easyanimate/utils/lora_utils.py): the whole
    name on the root first, then underscore-separated parts joined greedily until ``Module.__getattr__`` (child
    modules and parameters only, so ``to`` is no match) succeeds."""
    infos = layer.split("lora_unet_")[-1].split("_")
    try:
        return root.__getattr__("_".join(infos[1:]))
    except AttributeError:
        pass
    current, name = root, infos.pop(0)
    while True:
        try:
            current = current.__getattr__(name)
            if not infos:
                return current
            name = infos.pop(0)
        except AttributeError:
            name = f"{name}_{infos.pop(0)}" if name else infos.pop(0)


def _official_merge(transformer, path, multiplier):
    """merge_lora: W += multiplier * alpha / rank * up @ down for every layer of the file."""
    updates = {}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            layer, elem = key.split(".", 1)
            updates.setdefault(layer, {})[elem] = f.get_tensor(key).float()
    for layer, elems in updates.items():
        up, down = elems["lora_up.weight"], elems["lora_down.weight"]
        scale = elems["alpha"].item() / up.shape[1] if "alpha" in elems else 1.0
        _official_module(transformer, layer).weight.data += multiplier * scale * up @ down


def test_the_official_format_export_round_trips(trained, demo):
    config, result = trained
    with safe_open(str(result.lora_path), "pt") as f:
        keys, metadata = sorted(f.keys()), f.metadata()
        alpha = f.get_tensor("lora_unet__proj_out.alpha")
    assert len(keys) == 33 * 3 and all(re.fullmatch(r"lora_unet__[a-z0-9_]+\.(lora_down\.weight|lora_up\.weight|"
                                                    r"alpha)", k) for k in keys)
    assert "lora_unet__transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert alpha.item() == 4.0 and metadata["ss_network_dim"] == "4" and metadata["easyanimate_steps"] == "40"

    transformer = load_transformer(demo, dtype=torch.float32)
    final = read_lora(result.lora_path, transformer)
    last_checkpoint = read_lora(checkpoints.latest_checkpoint(config.output).lora, transformer)
    assert all(torch.equal(final.layers[n].up, last_checkpoint.layers[n].up) for n in final.layers)
    gen = torch.Generator().manual_seed(9)
    inputs = (torch.randn(1, 16, 2, 4, 6, generator=gen), torch.tensor([400.0]), torch.randn(1, 7, 64, generator=gen))
    with torch.no_grad(), applied(transformer, [(final, 0.7)]):
        ours = transformer(*inputs)
    merged = load_transformer(demo, dtype=torch.float32)
    _official_merge(merged, result.lora_path, 0.7)
    with torch.no_grad():
        torch.testing.assert_close(merged(*inputs), ours, atol=1e-5, rtol=1e-5)


def test_a_killed_run_resumes_from_its_checkpoint_with_the_same_loss_curve(trained, metadata, demo, workdir):
    config, _ = trained
    output = workdir / "killed"
    command = [sys.executable, "-m", "easyanimate_core", "train-lora", "--data", str(metadata), "--model", str(demo),
               "--output", str(output), "--name", "stripes", "--steps", "40", "--rank", "4", "--alpha", "4",
               "--learning-rate", "1e-2", "--max-grad-norm", "1", "--caption-dropout", "0", "--checkpoint-every", "10",
               "--video-size", "40", "--image-size", "40", "--frames", "5", "--frame-stride", "1", "--seed", "7",
               "--cache-dir", str(config.cache_dir), "--save-dtype", "float32", "--mixed-precision", "no"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("step 13/"):
            process.kill()
            break
    process.wait(timeout=60)
    assert process.returncode == -9, "".join(seen[-20:])
    assert not (output / "stripes.safetensors").exists()
    assert checkpoints.latest_checkpoint(output).step == 10

    resumed = train(replace(config, output=output, steps=20, resume=True))
    assert len(resumed.losses) == 10
    uninterrupted = _losses(config.output)[:20]
    got = _losses(output)
    assert [s for s, _ in got] == list(range(1, 21))
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in uninterrupted], rel=1e-6)
    assert read_lora(output / "stripes.safetensors", load_transformer(demo, dtype=torch.float32))

    with pytest.raises(ValueError, match="holds checkpoints of an earlier run.*--resume"):
        train(replace(config, output=output, steps=20))
    with pytest.raises(ValueError, match=r"rank \(was 4, now 8\)"):
        train(replace(config, output=output, steps=30, rank=8, resume=True))


def _no_partials(output: Path) -> list[Path]:
    return [p for p in output.rglob("*") if ".partial" in p.name]


def test_a_stop_request_ends_at_a_step_boundary_and_interrupted_saves_leave_no_file(metadata, demo, workdir,
                                                                                      monkeypatch):
    stop = threading.Event()
    config = _config(metadata, demo, workdir / "stopped", steps=6, checkpoint_every=2)

    def on_step(report):
        if report.step == 3:
            stop.set()

    with pytest.raises(TrainingStopped, match="stopped at step 3"):
        train(config, on_step=on_step, stop=stop)
    assert [c.step for c in checkpoints.complete_checkpoints(config.output)] == [2]
    assert not config.lora_path.exists() and _no_partials(config.output) == []

    # An interrupt while a checkpoint or the final LoRA is written leaves neither half-written.
    import safetensors.torch

    real_save = safetensors.torch.save_file

    def interrupted_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise KeyboardInterrupt

    for target in ("checkpoint-000004", "stripes.safetensors"):
        def save(tensors, filename, metadata=None, target=target):
            if target in str(filename):
                interrupted_save(tensors, filename, metadata)
            real_save(tensors, filename, metadata=metadata)

        monkeypatch.setattr(safetensors.torch, "save_file", save)
        with pytest.raises(KeyboardInterrupt):
            train(replace(config, resume=True))
        assert not config.lora_path.exists() and _no_partials(config.output) == []
    assert [c.step for c in checkpoints.complete_checkpoints(config.output)] == [2, 4, 6]
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    train(replace(config, resume=True))
    assert read_lora(config.lora_path, load_transformer(demo, dtype=torch.float32))


def test_the_cache_is_reused_and_every_option_path_runs(trained, metadata, demo, workdir, monkeypatch):
    config, _ = trained
    import easyanimate_core.training.data as data_module

    def no_encoder(*args, **kwargs):
        raise AssertionError("everything should come from the cache")

    monkeypatch.setattr(data_module, "load_text_encoder", no_encoder)
    monkeypatch.setattr(data_module, "load_vae", no_encoder)
    train(replace(config, output=workdir / "cached", steps=2))
    monkeypatch.undo()

    inp = write_demo_model(workdir / "demo-inp", variant="inp", seed=0)
    options = _config(metadata, inp, workdir / "options", steps=3, batch_size=2, gradient_accumulation=2,
                      gradient_checkpointing=True, cache=False, lr_schedule="cosine", lr_warmup_steps=1,
                      caption_dropout=0.5, i2v_ratio=1.0, validation_prompts=("orange stripes",),
                      validation_every=2, validation_steps=2, validation_size=(48, 32, 5),
                      target_modules=(r"attn1\.to_[qkv]", r"\.ff\.net"), save_dtype="bfloat16")
    result = train(options)
    assert len(result.losses) == 3 and all(math.isfinite(x) for x in result.losses)
    lrs = [float(row.split(",")[2]) for row in (options.output / "losses.csv").read_text().splitlines()[1:]]
    assert lrs[0] == pytest.approx(0.5e-2) and lrs[1] == pytest.approx(1e-2) and lrs[2] < lrs[1]
    assert sorted(p.name for p in (options.output / "validation").iterdir()) == [
        "step-000002-0.mp4", "step-000002-0.png", "step-000003-0.mp4", "step-000003-0.png"]
    lora = read_lora(result.lora_path, load_transformer(inp, dtype=torch.float32))
    assert len(lora.layers) == 2 * 5 and lora.layers["transformer_blocks.0.ff.net.2"].up.dtype == torch.float32
    with safe_open(str(result.lora_path), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if k.endswith("weight")} == {torch.bfloat16}
    report = json.loads((options.output / "dataset_report.json").read_text())
    assert report["images"] == 3 and len(report["skipped"]) == len(BAD_ENTRIES)


def test_control_models_and_bad_options_are_refused_with_a_reason(metadata, demo, workdir):
    control = write_demo_model(workdir / "demo-control", variant="control", seed=0)
    with pytest.raises(ValueError, match="Control.*Train on the T2V or InP model") as refused:
        train(_config(metadata, control, workdir / "control"))
    assert "12B" not in str(refused.value) and "V5.1 2-layer Control" in str(refused.value)  # its real size
    v5 = write_demo_model(workdir / "demo-v5", variant="t2v", seed=0, version="5")
    with pytest.raises(ValueError, match="V5 2-layer text-to-video model: LoRA training supports the V5.1 models"):
        train(_config(metadata, v5, workdir / "v5"))
    with pytest.raises(ValueError, match="fp8 base weights compute in bf16"):
        train(_config(metadata, demo, workdir / "fp8", fp8_base=True))
    with pytest.raises(ValueError, match="frames = 6"):
        train(_config(metadata, demo, workdir / "frames", buckets=replace(TINY, frames=6)))
