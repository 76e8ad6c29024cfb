"""Memory modes on tiny models: same output as full load, modules back where they were, no hook left behind."""

from __future__ import annotations

import pytest
import torch

from easyanimate_core.demo import demo_transformer_config, write_demo_model
from easyanimate_core.memory import MEMORY_MODES, TRANSFORMER_KEEP, Fp8CastLinear, Placement, store_in_fp8
from easyanimate_core.text_encoder import load_text_encoder
from easyanimate_core.transformer import EasyAnimateTransformer

CPU = torch.device("cpu")


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return EasyAnimateTransformer(demo_transformer_config("t2v"), dtype=dtype).eval().requires_grad_(False)


def _inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(1, 16, 2, 8, 12, generator=gen).to(dtype), torch.tensor([500.0]),
            (torch.randn(1, 7, 64, generator=gen) * 3).to(dtype))


def _hooks(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + hasattr(m, "_hf_hook") for m in module.modules())


@pytest.mark.parametrize("mode", ["model_cpu_offload", "sequential_cpu_offload", "block_swap"])
def test_placement_modes_match_full_load_and_leave_nothing_behind(mode):
    model, x = _model(), _inputs()
    expected = model(*x)
    before = {k: (v.clone(), v.device) for k, v in model.state_dict().items()}
    placement = Placement(mode, CPU, CPU, blocks_on_gpu=1)
    with placement.active(model):
        torch.testing.assert_close(model(*x), expected, atol=1e-6, rtol=1e-6)
        if mode == "sequential_cpu_offload":
            assert _hooks(model) > 0
    assert _hooks(model) == 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key][0]) and value.device == before[key][1], key


@pytest.mark.parametrize("mode", ["model_cpu_offload", "sequential_cpu_offload", "block_swap"])
def test_an_error_inside_removes_hooks(mode):
    model, x = _model(), _inputs()
    with pytest.raises(KeyboardInterrupt):
        with Placement(mode, CPU, CPU, blocks_on_gpu=0).active(model):
            model(*x)
            raise KeyboardInterrupt
    assert _hooks(model) == 0
    assert {p.device for p in model.parameters()} == {CPU}


def test_block_swap_restores_the_host_weights_it_swapped():
    model = _model()
    data_ptrs = {name: p.data_ptr() for name, p in model.named_parameters()}
    with Placement("block_swap", CPU, CPU, blocks_on_gpu=0).active(model):
        model(*_inputs())
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == data_ptrs


@pytest.mark.parametrize("mode, tolerance", [("model_cpu_offload_and_qfloat8", 0.05),
                                             ("model_cpu_offload_and_fp8_cast", 0.1)])
def test_fp8_storage_keeps_the_sensitive_layers_and_stays_close(mode, tolerance):
    reference, x = _model(torch.bfloat16), _inputs(torch.bfloat16)
    expected = reference(*x).float()
    model = _model(torch.bfloat16)
    store_in_fp8(model, Placement(mode, CPU, CPU).fp8, TRANSFORMER_KEEP)
    got = model(*x).float()
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    assert 0 < error < tolerance, error
    quantized = [n for n, m in model.named_modules() if type(m).__name__ in ("QLinear", "Fp8CastLinear")]
    assert "transformer_blocks.0.attn1.to_q" in quantized and "transformer_blocks.1.ff.net.2" in quantized
    for kept in ("proj_out", "norm_out.linear", "transformer_blocks.0.norm1.linear", "time_embedding.linear_1",
                 "text_proj.1"):
        assert kept not in quantized, kept
    if mode.endswith("fp8_cast"):
        assert model.transformer_blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
        assert isinstance(model.transformer_blocks[0].attn1.to_q, Fp8CastLinear)
        assert model.proj_out.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("mode", ["sequential_cpu_offload", "block_swap", "model_cpu_offload_and_qfloat8"])
def test_qwen_text_encoder_runs_in_the_mode(tmp_path, mode):
    folder = write_demo_model(tmp_path / "m")
    expected = load_text_encoder(folder, dtype=torch.float32).encode(["a cat"]).states
    placement = Placement(mode, CPU, CPU)
    encoder = load_text_encoder(folder, dtype=torch.float32, fp8=placement.fp8)
    with placement.active(encoder):
        got = encoder.encode(["a cat"]).states
    tolerance = 0.1 * expected.abs().max().item() if "qfloat8" in mode else 1e-5
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=0)
    assert _hooks(encoder) == 0


def test_bad_mode_names_the_choices():
    with pytest.raises(ValueError, match="memory mode 'lowvram'.*block_swap"):
        Placement("lowvram", CPU, CPU)
    assert len(MEMORY_MODES) == 6
