"""Out of memory gets a plan: where, what was being allocated, what to change (cheapest first), and no traceback."""

from __future__ import annotations

import pytest
import torch

from easyanimate_core import loading
from easyanimate_core.__main__ import main
from easyanimate_core.demo import write_demo_model
from easyanimate_core.out_of_memory import (
    OutOfMemoryError,
    OutOfMemoryPlan,
    Workload,
    explain_out_of_memory,
    is_out_of_memory,
    plan_for,
    requested_allocation,
)
from easyanimate_core.text_encoder import QwenTextEncoder
from easyanimate_core.transformer import EasyAnimateTransformer
from easyanimate_core.vae import MagvitVAE
from easyanimate_core.video import write_png

SMALL = ["--frames", "5", "--width", "48", "--height", "32", "--steps", "2", "--prompt", "a red ball"]
GPU_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.64 GiB of which "
           "1.10 GiB is free.")
HOST_OOM = "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to " \
           "allocate 6442450944 bytes. Error code 12 (Cannot allocate memory)"


@pytest.mark.parametrize("exc, expected", [
    (OutOfMemoryError(GPU_OOM), True),
    (torch.cuda.OutOfMemoryError(GPU_OOM), True),
    (MemoryError(), True),
    (RuntimeError(HOST_OOM), True),
    (RuntimeError("std::bad_alloc"), True),
    (RuntimeError("HIP out of memory. Tried to allocate 20.00 MiB"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), False),
    (ValueError("out of memory"), False),  # only allocation errors, not a message that mentions memory
    (KeyboardInterrupt(), False),
])
def test_out_of_memory_errors_of_every_kind_are_recognised(exc, expected):
    assert is_out_of_memory(exc) is expected


@pytest.mark.parametrize("text, expected", [
    (GPU_OOM, "2.00 GiB"),
    (HOST_OOM, "6.00 GiB"),
    ("CUDA out of memory. Tried to allocate 512.00 MiB", "512.00 MiB"),
    ("out of memory", None),
])
def test_the_failed_allocation_is_read_from_the_message(text, expected):
    assert requested_allocation(RuntimeError(text)) == expected


@pytest.mark.parametrize("mode, next_mode", [
    ("full", "model_cpu_offload"),
    ("model_cpu_offload", "model_cpu_offload_and_qfloat8"),
    ("model_cpu_offload_and_qfloat8", "block_swap"),
    ("model_cpu_offload_and_fp8_cast", "block_swap"),
    ("block_swap", "sequential_cpu_offload"),
])
def test_the_plan_starts_with_the_next_memory_mode_and_its_cost(mode, next_mode):
    plan = plan_for("sampling", "cuda:0", mode, Workload(672, 384, 49), vae_tiles=False, comfyui=False)
    assert plan[0].startswith(f"Memory mode: {mode} -> {next_mode} (--memory-mode)")
    assert "fewer frames" in plan[1].lower() and "25 frames instead of 49" in plan[1] and "496x288" in plan[1]
    assert "Tiled VAE" not in " ".join(plan)  # the transformer's peak is not the VAE's
    assert "nvidia-smi" in plan[-1]


def test_vae_stages_suggest_tiles_and_comfyui_gets_its_own_words():
    plan = plan_for("VAE decode", "cuda:0", "sequential_cpu_offload", Workload(1008, 576, 49), vae_tiles=True,
                    comfyui=True)
    text = "\n".join(plan)
    assert "already keeps the least" in plan[0]
    assert "tile_size on EasyAnimate Decode" in text and "Unload models" in text and "--lowvram" in text
    assert "--memory-mode" not in text and "--tile-size" not in text


def test_host_ram_gets_host_advice_not_a_vram_mode():
    plan = plan_for("loading the transformer and the VAE", "cpu", "full", Workload(), vae_tiles=False,
                    comfyui=False)
    assert plan[0].startswith("Free host RAM") and "qfloat8" in plan[0]
    assert not any(step.startswith("Memory mode") for step in plan)
    assert not any("Fewer frames" in step for step in plan)  # the size is unknown there: no made-up numbers


def test_the_plan_is_an_out_of_memory_error_without_the_original_chained():
    with pytest.raises(OutOfMemoryPlan) as caught:
        with explain_out_of_memory("sampling", "cuda:0", memory_mode="full", workload=Workload(672, 384, 49)):
            raise torch.cuda.OutOfMemoryError(GPU_OOM)
    plan = caught.value
    assert isinstance(plan, OutOfMemoryError)  # ComfyUI's own out-of-memory handling still applies
    assert plan.__cause__ is None and plan.__suppress_context__
    message = str(plan)
    assert message.startswith("Out of memory on cuda:0 during sampling while allocating 2.00 GiB")
    assert "What to change, cheapest first:\n  1. Memory mode: full -> model_cpu_offload" in message


def test_other_errors_pass_through_unchanged_and_a_plan_is_not_wrapped_twice():
    with pytest.raises(ValueError, match="bad"):
        with explain_out_of_memory("sampling", "cpu"):
            raise ValueError("bad")
    with pytest.raises(OutOfMemoryPlan) as caught:
        with explain_out_of_memory("VAE decode", "cpu"):
            with explain_out_of_memory("sampling", "cpu"):
                raise MemoryError()
    assert caught.value.stage == "sampling"


def test_the_failed_calls_tensors_are_freed_with_the_error():
    import gc
    import weakref

    def allocate_then_fail():
        big = torch.ones(1000)
        refs.append(weakref.ref(big))
        raise MemoryError()

    refs = []
    try:
        with explain_out_of_memory("sampling", "cpu"):
            allocate_then_fail()
    except OutOfMemoryPlan as caught:
        plan = caught  # kept alive, as ComfyUI keeps the error it reports
    gc.collect()
    assert plan.__context__ is not None and refs[0]() is None


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {variant: write_demo_model(root / f"demo-{variant}", variant=variant) for variant in ("t2v", "inp")}


def _fail(error):
    def raise_it(*args, **kwargs):
        raise error
    return raise_it


# (patched method, error, the stage the message must name, extra arguments, variant)
SITES = [
    (QwenTextEncoder, "encode", OutOfMemoryError(GPU_OOM), "text encoding", [], "t2v"),
    (EasyAnimateTransformer, "forward", OutOfMemoryError(GPU_OOM), "sampling", [], "t2v"),
    (EasyAnimateTransformer, "forward", RuntimeError(HOST_OOM), "sampling", [], "t2v"),
    (MagvitVAE, "decode", MemoryError(), "VAE decode", [], "t2v"),
    (MagvitVAE, "encode", OutOfMemoryError(GPU_OOM), "VAE encode", ["--start-image", "{image}"], "inp"),
]


@pytest.mark.parametrize("owner, method, error, stage, extra, variant", SITES,
                         ids=[f"{s[3]}-{type(s[2]).__name__}" for s in SITES])
def test_the_command_line_prints_the_plan_and_exits_non_zero_without_a_traceback(
        tmp_path, models, monkeypatch, caplog, capsys, owner, method, error, stage, extra, variant):
    image = write_png(tmp_path / "start.png", torch.rand(32, 48, 3))
    monkeypatch.setattr(owner, method, _fail(error))
    loaded = []
    real_load = loading.load_transformer
    monkeypatch.setattr(loading, "load_transformer", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
    output = tmp_path / "out.mp4"
    args = ["generate", *SMALL, "--model", str(models[variant]), "--memory-mode", "model_cpu_offload",
            "--output", str(output)] + [a.format(image=image) for a in extra]
    assert main(args) == 3
    logged = caplog.text
    assert f"during {stage}" in logged and "What to change, cheapest first" in logged
    assert "Traceback" not in logged and "Traceback" not in capsys.readouterr().err
    assert not output.exists()
    for model in loaded:  # every model back where it was, no hook left
        assert all(p.device.type == "cpu" for p in model.parameters())
        assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_no_tile_advice_once_the_smallest_tiles_ran_out_too():
    from easyanimate_core.vae_tiling import VAEOutOfMemoryError

    for error, tiles in ((OutOfMemoryError(GPU_OOM), True), (VAEOutOfMemoryError("even with tiles of 128 px"), False)):
        with pytest.raises(OutOfMemoryPlan) as caught:
            with explain_out_of_memory("VAE decode", "cuda:0", memory_mode="full", workload=Workload(672, 384, 49),
                                       vae_tiles=True):
                raise error
        assert ("Tiled VAE" in str(caught.value)) is tiles
