"""Memory modes on tiny models: same output as full load, modules back where they were, no hook left behind."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from easyanimate_core import chunking, memory
from easyanimate_core.demo import demo_transformer_config, write_demo_model
from easyanimate_core.memory import MEMORY_MODES, Placement, module_bytes, store_in_fp8
from easyanimate_core.text_encoder import load_text_encoder
from easyanimate_core.transformer import EasyAnimateTransformer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from benchlib import PeakTracker  # noqa: E402

CPU = torch.device("cpu")


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return EasyAnimateTransformer(demo_transformer_config("t2v"), dtype=dtype).eval().requires_grad_(False)


def _inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(1, 16, 2, 8, 12, generator=gen).to(dtype), torch.tensor([500.0]),
            (torch.randn(1, 7, 64, generator=gen) * 3).to(dtype))


def _hooks(module):
    """Hooks and hook leftovers: accelerate's ``_hf_hook`` and an instance ``forward`` that shadows the class's."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + hasattr(m, "_hf_hook") + ("forward" in vars(m))
               for m in module.modules())


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
    store_in_fp8(model, Placement(mode, CPU, CPU).fp8)
    got = model(*x).float()
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    assert 0 < error < tolerance, error
    quantized = [n for n, m in model.named_modules() if type(m).__name__ == "QLinear"
                 or (isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float8_e4m3fn)]
    assert "transformer_blocks.0.attn1.to_q" in quantized and "transformer_blocks.1.ff.net.2" in quantized
    for kept in ("proj_out", "norm_out.linear", "transformer_blocks.0.norm1.linear", "time_embedding.linear_1",
                 "text_proj.1"):
        assert kept not in quantized, kept
    if mode.endswith("fp8_cast"):
        assert model.transformer_blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
        assert model.transformer_blocks[0].attn1.to_q.bias.dtype == torch.bfloat16  # only the weight is stored low
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


def _four_block_model():
    torch.manual_seed(0)
    config = dataclasses.replace(demo_transformer_config("t2v"), num_layers=4, mmdit_layers=4)
    return EasyAnimateTransformer(config).eval().requires_grad_(False)


def test_model_offload_asks_comfyui_for_room_for_weights_and_activations():
    model, asked = _model(), []
    placement = Placement("model_cpu_offload", torch.device("cpu", 0), CPU, make_room=asked.append)  # "another" device
    with placement.active(model, working_bytes=12345):
        pass
    assert asked == [module_bytes(model) + 12345]


@pytest.mark.parametrize("fit", [0, 1, 4])  # 2 or 3 resident + 2 in flight would hold all 4
def test_block_swap_keeps_as_many_blocks_as_fit_beside_the_activations(monkeypatch, fit):
    model, x = _four_block_model(), _inputs()
    expected = model(*x)
    blocks = [module_bytes(b) for b in model.transformer_blocks]
    fixed = module_bytes(model) - sum(blocks) + 5000  # the other weights and 5000 bytes of activations
    needed = fixed + (sum(blocks) if fit == 4 else sum(blocks[:fit]) + 2 * max(blocks))
    monkeypatch.setattr(memory, "free_memory", lambda device: int(needed / memory.MEMORY_MARGIN) + 1)
    asked = []
    with Placement("block_swap", CPU, CPU, make_room=asked.append).active(model, working_bytes=5000):
        streamed = [i for i, block in enumerate(model.transformer_blocks) if block._forward_pre_hooks]
        torch.testing.assert_close(model(*x), expected, atol=0, rtol=0)
    assert streamed == list(range(fit, 4))
    assert asked == [module_bytes(model) + 5000]  # ComfyUI frees room for everything before the count is made
    assert _hooks(model) == 0


def test_block_swap_with_unknown_free_memory_streams_every_block(monkeypatch):
    model = _four_block_model()
    monkeypatch.setattr(memory, "free_memory", lambda device: None)
    with Placement("block_swap", CPU, CPU).active(model):
        assert all(block._forward_pre_hooks for block in model.transformer_blocks)


@pytest.mark.parametrize("chunk", [10**6, 40, 13], ids=["whole", "chunk-40", "chunk-13"])
def test_activation_estimate_follows_the_counted_peak(monkeypatch, chunk):
    # benchlib.PeakTracker counts every tensor a forward creates while it is alive; the estimate that sizes
    # ComfyUI's room and block_swap's block count must follow it (measured 0.98 / 1.06 / 0.98 on this config).
    monkeypatch.setattr(chunking, "TOKEN_CHUNK", chunk)
    torch.manual_seed(0)
    config = dataclasses.replace(demo_transformer_config("t2v"), num_attention_heads=4, attention_head_dim=64)
    model = EasyAnimateTransformer(config, dtype=torch.bfloat16).eval()
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 16, 3, 16, 24, generator=gen).bfloat16()  # 288 video tokens per sample
    text, timestep = torch.randn(2, 7, config.text_embed_dim, generator=gen).bfloat16(), torch.tensor([500.0] * 2)
    with torch.inference_mode(), PeakTracker((*model.parameters(), *model.buffers(), latents, text, timestep)) as t:
        model(latents, timestep, text)
    assert 0.85 < model.activation_bytes(tuple(latents.shape), 7) / t.peak < 1.2


def test_sequential_offload_runs_whole_tensors_so_each_layer_is_fetched_once(monkeypatch):
    # accelerate's hooks copy a layer's weights at every call: token chunks would copy them once per chunk.
    monkeypatch.setattr(chunking, "TOKEN_CHUNK", 5)  # 48 video tokens: 10 chunks
    model, x = _model(), _inputs()
    calls = []
    model.transformer_blocks[0].ff.net[2].register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        expected = model(*x)
        chunked_calls = len(calls)
        with Placement("sequential_cpu_offload", CPU, CPU).active(model):
            calls.clear()
            torch.testing.assert_close(model(*x), expected, atol=1e-5, rtol=1e-5)
        assert chunking.chunked()  # back to chunks after the mode
    assert chunked_calls == 10 and len(calls) == 1


CURRENT = f"cuda:{torch.cuda.current_device() if torch.cuda.is_available() else 0}"


@pytest.mark.parametrize("given, expected", [
    ("cuda", CURRENT), ("cuda:1", "cuda:1"), (torch.device("cuda"), CURRENT), ("cpu", "cpu"), ("meta", "meta"),
])
def test_placements_name_each_device_as_its_tensors_do(given, expected):
    assert memory.canonical_device(given) == torch.device(expected)
    placement = Placement("block_swap", given, "cpu")
    assert placement.compute == torch.device(expected) and placement.offload == CPU


def test_an_instance_forward_a_module_had_survives_sequential_offload():
    model, x = _model(), _inputs()
    block = model.transformer_blocks[0]
    block.forward = block.forward  # an instance attribute set by someone else (e.g. another hook library)
    with Placement("sequential_cpu_offload", CPU, CPU).active(model):
        model(*x)
    assert "forward" in vars(block)
    assert not any("forward" in vars(m) for m in model.modules() if m is not block)
