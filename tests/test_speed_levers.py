"""Regional torch.compile and the attention backends: compiled equals eager, a new prompt or seed compiles
nothing new, the blocks come back after an interrupt; backends that cannot run here fall back to SDPA with the
reason logged (their selection is tested with stand-in packages); the EasyAnimate Compile node in ComfyUI."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch
from conftest import load_pack

from easyanimate_core import attention_backends
from easyanimate_core.attention_backends import select_attention
from easyanimate_core.demo import demo_transformer_config, write_demo_model
from easyanimate_core.ops import sdpa_attention
from easyanimate_core.regional_compile import compiled_blocks
from easyanimate_core.sampling import denoise
from easyanimate_core.scheduler import FlowMatchEulerScheduler
from easyanimate_core.transformer import DiTBlock, EasyAnimateTransformer

pack = load_pack()
NODES = pack.NODE_CLASS_MAPPINGS


def _model():
    torch.manual_seed(0)
    return EasyAnimateTransformer(demo_transformer_config("t2v"), dtype=torch.float32).eval()


def _sample(model, seed=3, steps=3):
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, 16, 2, 4, 6, generator=gen)
    text, negative = (torch.randn(1, 7, model.config.text_embed_dim, generator=gen) for _ in "ab")
    with torch.inference_mode():
        return denoise(model, FlowMatchEulerScheduler(), noise=noise, text=text, negative_text=negative, steps=steps,
                       guidance=6.0)


def test_regional_compile_equals_eager_and_restores_the_blocks():
    model = _model()
    expected = _sample(model)
    keys = list(model.state_dict())
    with compiled_blocks(model):
        assert all(type(b).__name__ == "OptimizedModule" for b in model.transformer_blocks)
        got = _sample(model)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert all(type(b) is DiTBlock for b in model.transformer_blocks) and list(model.state_dict()) == keys


def test_a_new_prompt_or_seed_compiles_nothing_new():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = _model()
    with compiled_blocks(model, backend="eager"):
        _sample(model, seed=3)
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 1
        _sample(model, seed=4)  # other noise, other prompt states
        _sample(model, seed=5, steps=5)
        assert counters["stats"]["unique_graphs"] == graphs


def test_an_interrupt_puts_the_plain_blocks_back():
    model = _model()
    with pytest.raises(KeyboardInterrupt), compiled_blocks(model, backend="eager"):
        raise KeyboardInterrupt
    assert all(type(b) is DiTBlock for b in model.transformer_blocks)


def test_backends_that_cannot_run_here_fall_back_to_sdpa_and_say_why(caplog):
    with caplog.at_level(logging.INFO, logger="easyanimate_core.attention_backends"):
        for name in ("flash", "sage", "auto"):
            fn, used = select_attention(name, "cpu", torch.bfloat16)
            assert (fn, used) == (sdpa_attention, "sdpa")
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "instead of flash" in messages and "needs a CUDA GPU (the model computes on cpu)" in messages
    assert select_attention("sdpa", "cpu", torch.float32) == (sdpa_attention, "sdpa")
    with pytest.raises(ValueError, match="attention backend 'xformers'"):
        select_attention("xformers", "cpu", torch.float32)


@pytest.fixture()
def fake_gpu_with_sage(monkeypatch):
    """A stand-in SageAttention package (SDPA in its layout) on a pretend compute-capability-8.9 GPU."""
    calls = []
    package = types.ModuleType("sageattention")

    def sageattn(q, k, v, tensor_layout, is_causal):
        calls.append(tensor_layout)
        assert tensor_layout == "HND" and not is_causal
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    package.sageattn = sageattn
    monkeypatch.setitem(sys.modules, "sageattention", package)
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    return calls


def test_auto_picks_an_importable_kernel_and_its_layout_matches_sdpa(fake_gpu_with_sage, monkeypatch):
    real = attention_backends.unavailable_reason
    # the CPU stands in for the GPU: only the device check is skipped
    monkeypatch.setattr(attention_backends, "unavailable_reason",
                        lambda name, device, dtype: real(name, torch.device("cuda"), dtype))
    fn, used = select_attention("auto", "cpu", torch.bfloat16)
    assert used == "sage"
    q, k, v = (torch.randn(2, 3, 10, 16) for _ in range(3))
    torch.testing.assert_close(fn(q, k, v), sdpa_attention(q, k, v))
    assert fake_gpu_with_sage == ["HND"]
    _, used = select_attention("flash", "cpu", torch.bfloat16)
    assert used == "sdpa"  # flash_attn does not import


def test_a_kernel_that_fails_falls_back_to_sdpa_once(fake_gpu_with_sage, monkeypatch, caplog):
    monkeypatch.setattr(sys.modules["sageattention"], "sageattn",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("head_dim 72 is not supported")))
    real = attention_backends.unavailable_reason
    monkeypatch.setattr(attention_backends, "unavailable_reason",
                        lambda name, device, dtype: real(name, torch.device("cuda"), dtype))
    fn, _ = select_attention("sage", "cpu", torch.bfloat16)
    q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
    with caplog.at_level(logging.WARNING):
        first, second = fn(q, k, v), fn(q, k, v)
    torch.testing.assert_close(first, sdpa_attention(q, k, v))
    torch.testing.assert_close(second, first)
    assert sum("head_dim 72" in r.getMessage() for r in caplog.records) == 1


def test_the_transformer_calls_the_attention_of_its_namespace():
    import dataclasses

    from easyanimate_core.ops import DEFAULT_OPS

    seen = []

    def recording(q, k, v):
        seen.append(q.shape)
        return sdpa_attention(q, k, v)

    torch.manual_seed(0)
    model = EasyAnimateTransformer(demo_transformer_config("t2v"), dtype=torch.float32,
                                   ops=dataclasses.replace(DEFAULT_OPS, attention=recording)).eval()
    _sample(model, steps=1)
    assert len(seen) == len(model.transformer_blocks)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_demo_model(root / "demo-t2v", variant="t2v")
    return root


def test_the_compile_node_compiles_the_blocks_while_comfyui_has_the_model_loaded(comfyui, monkeypatch):
    import comfy.model_management as mm

    from easyanimate_core import regional_compile

    real = regional_compile.compile_block
    monkeypatch.setattr(regional_compile, "compile_block", lambda block, mode=None: real(block, "eager", mode))

    def run(node, **inputs):
        instance = NODES[node]()
        return getattr(instance, instance.FUNCTION)(**inputs)

    model, text_encoder, vae, _ = run("EasyAnimateModelLoader", model="demo-t2v", precision="fp32",
                                      memory_mode="full", blocks_on_gpu=-1, weight_dtype="default")
    positive, negative = run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="")
    sample = dict(vae=vae, positive=positive, negative=negative, width=48, height=32, frames=5, steps=2,
                  guidance=6.0, seed=1, denoise_strength=1.0, teacache_threshold=0.0, teacache_start_steps=1,
                  teacache_end_steps=1, cfg_skip_ratio=0.0)
    (expected,) = run("EasyAnimateSampler", model=model, **sample)
    (compiled,) = run("EasyAnimateCompile", model=model, mode="default")
    blocks = model.model.diffusion_model.transformer_blocks
    (got,) = run("EasyAnimateSampler", model=compiled, **sample)
    torch.testing.assert_close(got["samples"], expected["samples"], rtol=0, atol=1e-5)
    mm.unload_all_models()
    # ComfyUI took the patches out with the model (the pack's own copy of the core: compare by name)
    assert [type(b).__name__ for b in blocks] == ["DiTBlock"] * len(blocks)


def test_no_compiled_graph_keeps_a_swapped_out_model_alive():
    import gc
    import weakref

    model = _model()
    with compiled_blocks(model):
        _sample(model, steps=1)
    weight = weakref.ref(model.transformer_blocks[0].attn1.to_q.weight)
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None and weight() is None
    replacement = _model()  # a new model of the same shape reuses the graph with its own weights
    with torch.no_grad():
        for p in replacement.parameters():
            p.mul_(1.25)
    expected = _sample(replacement)
    with compiled_blocks(replacement):
        torch.testing.assert_close(_sample(replacement), expected, rtol=0, atol=1e-4)
