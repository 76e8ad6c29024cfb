"""fp8 matmul (``--fp8-matmul``, ``load_transformer(fp8="fp8_scaled")``): per-row scales keep every row within fp8's
precision, ``torch._scaled_mm`` (PyTorch's CPU kernel here, the same call as on a GPU) agrees with the dequantized
product, the layers it cannot take fall back, and the model loads, samples, takes LoRAs and memory modes."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from easyanimate_core import regional_compile
from easyanimate_core.__main__ import main
from easyanimate_core.demo import write_demo_model
from easyanimate_core.fp8_matmul import FP8, ScaledFp8Linear, scaled_mm_runs
from easyanimate_core.loading import load_transformer
from easyanimate_core.lora import LoraLayer, applied, read_lora, save_lora
from easyanimate_core.memory import Placement, module_bytes
from easyanimate_core.sampling import denoise
from easyanimate_core.scheduler import FlowMatchEulerScheduler

CPU = torch.device("cpu")


def _layer(in_features=64, out_features=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layer = ScaledFp8Linear(in_features, out_features, dtype=torch.bfloat16)
    # rows six orders of magnitude apart: one scale for the whole tensor would flush the small rows to zero
    weight = torch.randn(out_features, in_features, generator=gen) * torch.logspace(-3, 3, out_features)[:, None]
    bias = torch.randn(out_features, generator=gen).to(torch.bfloat16)
    layer.store_weight(weight)
    layer.bias = torch.nn.Parameter(bias, requires_grad=False)
    return layer, weight


def test_each_row_keeps_fp8_precision_relative_to_its_own_maximum():
    layer, weight = _layer()
    assert layer.weight.dtype == FP8 and layer.weight_scale.shape == (32, 1)
    error = (layer.dequantized_weight(torch.float32) - weight).abs().amax(dim=1)
    # e4m3 keeps 3 mantissa bits: rounding moves a value by at most 2^-4 of itself, so of the row's maximum
    assert torch.all(error <= weight.abs().amax(dim=1) * 2**-4)
    assert "weight_scale" not in layer.state_dict()  # the checkpoint keys stay those on disk


def test_scaled_mm_agrees_with_the_dequantized_product():
    layer, _ = _layer(64, 32)
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    assert scaled_mm_runs(x, layer)
    got = layer(x).float()
    dequantized = F.linear(x.float(), layer.dequantized_weight(torch.float32), layer.bias.float())
    assert got.shape == (2, 5, 32)
    # only the input's per-token fp8 rounding (2^-4 relative) separates the two, per output column
    error = (got - dequantized).abs().amax(dim=(0, 1)) / dequantized.abs().amax(dim=(0, 1))
    assert torch.all(error < 0.08), error


@pytest.mark.parametrize("in_features, dtype", [(24, torch.bfloat16), (64, torch.float32), (64, torch.float16)])
def test_layers_scaled_mm_cannot_take_compute_on_the_dequantized_weight(in_features, dtype):
    layer, _ = _layer(in_features, 32)
    x = torch.randn(3, in_features, generator=torch.Generator().manual_seed(2)).to(dtype)
    assert not scaled_mm_runs(x, layer)
    expected = F.linear(x, layer.dequantized_weight(dtype), layer.bias.to(dtype))
    assert torch.equal(layer(x), expected)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("m") / "demo-t2v", variant="t2v")


def _sample(model, steps=3):
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 16, 2, 4, 6, generator=gen)
    text = torch.randn(1, 7, model.config.text_embed_dim, generator=gen)
    with torch.inference_mode():
        return denoise(model, FlowMatchEulerScheduler(), noise=noise, text=text, negative_text=text * 0.5,
                       steps=steps, guidance=6.0).float()


def test_the_loaded_model_quantizes_the_large_linears_only_and_samples_close_to_bf16(folder):
    plain = load_transformer(folder, dtype=torch.bfloat16)
    model = load_transformer(folder, dtype=torch.bfloat16, fp8="fp8_scaled")
    quantized = {n for n, m in model.named_modules() if isinstance(m, ScaledFp8Linear) and m.weight_scale is not None}
    assert "transformer_blocks.0.attn1.to_q" in quantized and "transformer_blocks.1.ff.net.2" in quantized
    for kept in ("proj_out", "norm_out.linear", "transformer_blocks.0.norm1.linear", "time_embedding.linear_1",
                 "text_proj.1"):
        assert kept not in quantized and model.get_submodule(kept).weight.dtype == torch.bfloat16, kept
    assert list(model.state_dict()) == list(plain.state_dict())
    assert module_bytes(model) < 0.75 * module_bytes(plain)
    expected, got = _sample(plain), _sample(model)
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    assert 0 < error < 0.03, error


def test_a_lora_applies_on_top_and_leaves_the_fp8_weights_untouched(folder, tmp_path):
    model = load_transformer(folder, dtype=torch.bfloat16, fp8="fp8_scaled")
    target = model.get_submodule("transformer_blocks.0.attn1.to_q")
    gen = torch.Generator().manual_seed(3)
    path = save_lora(tmp_path / "style.safetensors", {"transformer_blocks.0.attn1.to_q": LoraLayer(
        down=torch.randn(4, target.in_features, generator=gen), up=torch.randn(target.out_features, 4, generator=gen),
        alpha=4.0)})
    weight, scale = target.weight.clone(), target.weight_scale.clone()
    base = _sample(model, steps=1)
    with applied(model, [(read_lora(path, model), 1.0)]):
        styled = _sample(model, steps=1)
    assert (styled - base).abs().max() > 1e-3
    assert torch.equal(target.weight, weight) and torch.equal(target.weight_scale, scale)
    assert torch.equal(_sample(model, steps=1), base)


@pytest.mark.parametrize("mode", ["block_swap", "sequential_cpu_offload", "model_cpu_offload"])
def test_memory_modes_give_the_full_mode_result(folder, mode):
    model = load_transformer(folder, dtype=torch.bfloat16, fp8="fp8_scaled")
    expected = _sample(model, steps=2)
    with Placement(mode, CPU, CPU, blocks_on_gpu=0).active(model):
        got = _sample(model, steps=2)
    assert torch.equal(got, expected)


def test_the_command_line_takes_every_speed_lever_at_once(tmp_path, monkeypatch, caplog):
    real = regional_compile.compile_block
    monkeypatch.setattr(regional_compile, "compile_block", lambda block, backend, mode: real(block, "eager", mode))
    output = tmp_path / "fast.mp4"
    with caplog.at_level(logging.INFO):
        code = main(["generate", "--prompt", "a cat", "--model", "demo", "--frames", "5", "--width", "48", "--height",
                     "32", "--steps", "3", "--dtype", "bfloat16", "--fp8-matmul", "--compile", "--attention", "auto",
                     "--teacache", "0.1", "--output", str(output)])
    assert code == 0 and output.is_file()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "fp8_scaled linears" in messages and "torch.compile" in messages
    assert "PyTorch SDPA instead of auto" in messages


@pytest.mark.parametrize("triton", [True, False])
def test_the_gpu_quantizer_is_fused_only_where_triton_can_build_it(monkeypatch, caplog, triton):
    import torch.utils._triton

    from easyanimate_core import fp8_matmul

    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: triton)
    fp8_matmul._gpu_quantizer.cache_clear()
    try:
        quantizer = fp8_matmul._gpu_quantizer()
        assert (quantizer is fp8_matmul.quantize_rows) is not triton  # eager, not a failing compile, without it
        assert ("Triton is not installed" in caplog.text) is not triton
    finally:
        fp8_matmul._gpu_quantizer.cache_clear()
