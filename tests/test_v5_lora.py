"""LoRAs and the two families: a reward-style LoRA (official format, block and text-projection layers) applies to a
V5 model and changes its output; a LoRA that trains the other family's text projection is refused by name, in
either key format and either direction; block-only LoRAs cannot be told apart and apply to both."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from easyanimate_core import ModelFormatError
from easyanimate_core.demo import write_demo_model
from easyanimate_core.loading import load_transformer
from easyanimate_core.lora import LoraLayer, applied, read_lora, save_lora


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: load_transformer(write_demo_model(root / family, variant="t2v", version=version),
                                     dtype=torch.float32).eval()
            for family, version in (("V5", "5"), ("V5.1", "5.1"))}


def _layers(model, names, seed=0):
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    return {name: LoraLayer(torch.randn(4, modules[name].in_features, generator=gen) * 0.1,
                            torch.randn(modules[name].out_features, 4, generator=gen) * 0.1, 4.0) for name in names}


BLOCK = "transformer_blocks.0.attn1.to_q"


def test_a_reward_style_lora_applies_to_a_v5_model_and_changes_its_output(tmp_path, models):
    v5 = models["V5"]
    path = save_lora(tmp_path / "hps.safetensors", _layers(v5, [BLOCK, "text_proj", "text_proj_t5"]))
    lora = read_lora(path, v5)
    assert set(lora.layers) == {BLOCK, "text_proj", "text_proj_t5"}
    gen = torch.Generator().manual_seed(1)
    latents, text = torch.randn(1, 16, 2, 4, 6, generator=gen), torch.randn(1, 7, v5.config.text_embed_dim)
    t5 = torch.randn(1, 5, v5.config.text_embed_dim_t5, generator=gen)
    with torch.no_grad():
        plain = v5(latents, torch.tensor([500.0]), text, text_states_t5=t5)
        with applied(v5, [(lora, 1.0)]):
            styled = v5(latents, torch.tensor([500.0]), text, text_states_t5=t5)
        again = v5(latents, torch.tensor([500.0]), text, text_states_t5=t5)
    assert not torch.allclose(plain, styled) and torch.equal(plain, again)  # applied, then taken off


@pytest.mark.parametrize("source, target, layer", [
    ("V5", "V5.1", "text_proj_t5"), ("V5", "V5.1", "text_proj"), ("V5.1", "V5", "text_proj.1"),
])
@pytest.mark.parametrize("key_format", ["official", "peft"])
def test_a_lora_of_the_other_family_is_refused_by_name(tmp_path, models, source, target, layer, key_format):
    layers = _layers(models[source], [BLOCK, layer])
    path = tmp_path / "other.safetensors"
    if key_format == "official":
        save_lora(path, layers)
    else:  # diffusers/PEFT names (original-layout module paths map to the same layers)
        save_file({f"transformer.{name}.lora_{part}.weight": tensor.contiguous() for name, l in layers.items()
                   for part, tensor in (("A", l.down), ("B", l.up))}, str(path))
    expected = "EasyAnimate V5 (Bert + mT5)" if source == "V5" else "EasyAnimate V5.1 (Qwen2-VL)"
    with pytest.raises(ModelFormatError, match=rf"is a LoRA for {re.escape(expected)}.*load a {source} model"):
        read_lora(path, models[target])


def test_block_only_loras_apply_to_either_family(tmp_path, models):
    path = save_lora(tmp_path / "blocks.safetensors", _layers(models["V5"], [BLOCK]))
    for model in models.values():
        assert set(read_lora(path, model).layers) == {BLOCK}
