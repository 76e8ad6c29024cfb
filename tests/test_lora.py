"""LoRA reading (official and PEFT/diffusers formats) and unmerged application that never changes the model."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from easyanimate_core import ModelFormatError
from easyanimate_core.demo import demo_transformer_config
from easyanimate_core.lora import LoraLayer, applied, read_lora, save_lora
from easyanimate_core.transformer import EasyAnimateTransformer

TARGETS = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn2.to_k", "transformer_blocks.1.ff.net.2",
           "proj_out"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return EasyAnimateTransformer(demo_transformer_config("t2v")).eval().requires_grad_(False)


def _inputs(model):
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(1, 16, 2, 4, 6, generator=gen), torch.tensor([500.0]),
            torch.randn(1, 5, model.config.text_embed_dim, generator=gen))


def _layers(model, rank=4, seed=2):
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    return {name: LoraLayer(down=torch.randn(rank, modules[name].in_features, generator=gen) * 0.1,
                            up=torch.randn(modules[name].out_features, rank, generator=gen) * 0.1, alpha=2.0)
            for name in TARGETS}


def test_official_format_applies_the_reference_formula_and_leaves_nothing_behind(tmp_path, model):
    layers = _layers(model)
    path = save_lora(tmp_path / "style.safetensors", layers)
    lora = read_lora(path, model)
    assert sorted(lora.layers) == sorted(TARGETS)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    x = _inputs(model)
    base = model(*x)
    with applied(model, [(lora, 0.8)]):
        got = model(*x)
    # Reference 9.1: W <- W + strength * (alpha / rank) * up @ down, here merged by hand on a copy.
    merged = EasyAnimateTransformer(model.config).eval()
    merged.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, layer in layers.items():
            dict(merged.named_modules())[name].weight += 0.8 * (2.0 / 4) * layer.up @ layer.down
    torch.testing.assert_close(got, merged(*x), atol=1e-5, rtol=1e-5)
    assert (got - base).abs().max() > 1e-4
    assert torch.equal(model(*x), base)
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())


def test_peft_diffusers_names_match_the_official_file(tmp_path, model):
    layers = _layers(model)
    official = read_lora(save_lora(tmp_path / "a.safetensors", layers), model)
    peft = {}
    for name, layer in layers.items():
        diffusers_name = {"transformer_blocks.0.attn2.to_k": "transformer_blocks.0.attn1.add_k_proj"}.get(name, name)
        # PEFT files carry no alpha: fold alpha / rank into up so both files mean the same.
        peft[f"transformer.{diffusers_name}.lora_A.weight"] = layer.down
        peft[f"transformer.{diffusers_name}.lora_B.weight"] = layer.up * layer.scale
    save_file(peft, tmp_path / "peft.safetensors")
    converted = read_lora(tmp_path / "peft.safetensors", model)
    x = _inputs(model)
    with applied(model, [(official, 1.0)]):
        a = model(*x)
    with applied(model, [(converted, 1.0)]):
        b = model(*x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_several_loras_stack_and_an_error_inside_removes_them(tmp_path, model):
    one = read_lora(save_lora(tmp_path / "1.safetensors", _layers(model, seed=3)), model)
    two = read_lora(save_lora(tmp_path / "2.safetensors", _layers(model, seed=4)), model)
    x = _inputs(model)
    base = model(*x)
    with applied(model, [(one, 1.0)]):
        only_one = model(*x)
    with applied(model, [(one, 1.0), (two, 0.0)]):
        assert torch.equal(model(*x), only_one)
    with applied(model, [(one, 1.0), (two, 1.0)]):
        assert not torch.equal(model(*x), only_one)
    with pytest.raises(KeyboardInterrupt):
        with applied(model, [(one, 1.0), (two, 1.0)]):
            raise KeyboardInterrupt  # an interrupt mid-run
    assert torch.equal(model(*x), base)
    assert not any(m._forward_hooks for m in model.modules())


def test_a_lora_for_another_family_is_refused_with_a_hint(tmp_path, model):
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(8, 4)}, tmp_path / "flux.safetensors")
    with pytest.raises(ModelFormatError, match=r"2 of 2 tensors fit no layer.*double_blocks.*Flux or HunyuanVideo"):
        read_lora(tmp_path / "flux.safetensors", model)


def test_a_lora_for_another_size_is_refused(tmp_path, model):
    save_lora(tmp_path / "big.safetensors", {"proj_out": LoraLayer(torch.zeros(4, 3072), torch.zeros(64, 4), 4.0)})
    with pytest.raises(ModelFormatError, match="proj_out.*another model size"):
        read_lora(tmp_path / "big.safetensors", model)


def test_save_is_atomic_and_round_trips(tmp_path, model):
    layers = _layers(model)
    path = save_lora(tmp_path / "out" / "x.safetensors", layers, metadata={"rank": "4"})
    assert not list((tmp_path / "out").glob("*.partial"))
    back = read_lora(path, model)
    for name, layer in layers.items():
        assert torch.equal(back.layers[name].down, layer.down) and back.layers[name].alpha == 2.0


@pytest.mark.parametrize("mode", ["sequential_cpu_offload", "block_swap", "model_cpu_offload"])
def test_loras_work_under_every_placement(tmp_path, model, mode):
    from easyanimate_core.memory import Placement

    lora = read_lora(save_lora(tmp_path / "a.safetensors", _layers(model)), model)
    x = _inputs(model)
    with applied(model, [(lora, 1.0)]):
        expected = model(*x)
    cpu = torch.device("cpu")
    with Placement(mode, cpu, cpu, blocks_on_gpu=1).active(model), applied(model, [(lora, 1.0)]):
        got = model(*x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
