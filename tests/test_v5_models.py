"""EasyAnimate V5 (Bert + mT5) models: the two-stream text projection, V5 prompt encoding, loading and refusals.

Tolerances: fp32 tiny random models on the CPU. 1e-4 against diffusers' transformer (as tests/test_transformer.py:
the same formulas, other GEMM shapes and op order); 1e-5 against the hand-written text projection (the same model
blocks, only the projection written out); 1e-6 for the text encoders, which run the very transformers modules the
reference runs (only the loading path differs).
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY_TRANSFORMER, diffusers_transformer, randomize_, save_original_layout, transformer_inputs

from easyanimate_core import load_transformer, transformer_config_from_dict
from easyanimate_core.transformer import EasyAnimateTransformer

T5_DIM = 40
V5_VARIANTS = {"t2v": 16, "inp": 33, "control": 32}


def _v5_diffusers(in_channels=16, num_layers=2, mmdit_layers=2, seed=0):
    from diffusers import EasyAnimateTransformer3DModel

    torch.manual_seed(seed)
    model = EasyAnimateTransformer3DModel(in_channels=in_channels, num_layers=num_layers, mmdit_layers=mmdit_layers,
                                          add_norm_text_encoder=False, text_embed_dim_t5=T5_DIM, **TINY_TRANSFORMER)
    return randomize_(model, seed).eval()


def _t5_states(batch=2, length=9, seed=5):
    return torch.randn(batch, length, T5_DIM, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("variant", sorted(V5_VARIANTS))
def test_v5_transformer_matches_diffusers_in_both_layouts(tmp_path, variant):
    reference = _v5_diffusers(in_channels=V5_VARIANTS[variant])
    reference.save_pretrained(tmp_path / "diffusers" / "transformer", safe_serialization=True)
    save_original_layout(reference, tmp_path / "original" / "transformer")
    for folder in (tmp_path / "diffusers", tmp_path / "original" / "transformer"):
        ours = load_transformer(folder, dtype=torch.float32)
        assert ours.config.family == "V5" and ours.config.variant == variant
        assert "EasyAnimate V5 " in ours.config.variant_description
        assert tuple(ours.text_proj_t5.weight.shape) == (32, T5_DIM)
        latents, timestep, bert, extra = transformer_inputs(ours.config, h=8, w=12)
        t5 = _t5_states()
        with torch.no_grad():
            expected = reference(latents, timestep, encoder_hidden_states=bert, encoder_hidden_states_t5=t5,
                                 return_dict=False, **extra)[0]
            got = ours(latents, timestep, bert, text_states_t5=t5, **extra)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_two_stream_text_projection_follows_the_reference_formula():
    """V5 = the V5.1 blocks fed [Bert @ W_b + b_b ; T5 @ W_t + b_t] (Bert tokens first), written out by hand: a
    V5.1-shaped copy whose text projection is the identity receives the hand-projected joint sequence."""
    v5_config = transformer_config_from_dict(dict(TINY_TRANSFORMER, text_embed_dim_t5=T5_DIM,
                                                  add_norm_text_encoder=False), "diffusers")
    v5 = randomize_(EasyAnimateTransformer(v5_config, dtype=torch.float32), seed=7).eval()
    width = v5_config.inner_dim
    plain_config = transformer_config_from_dict(dict(TINY_TRANSFORMER, text_embed_dim=width,
                                                     add_norm_text_encoder=False), "diffusers")
    plain = EasyAnimateTransformer(plain_config, dtype=torch.float32).eval()
    state = {k: v for k, v in v5.state_dict().items() if not k.startswith("text_proj")}
    state.update({"text_proj.weight": torch.eye(width), "text_proj.bias": torch.zeros(width)})
    plain.load_state_dict(state)

    latents, timestep, bert, _ = transformer_inputs(v5_config, h=8, w=12)
    t5 = _t5_states()
    joint = torch.cat([bert @ v5.text_proj.weight.T + v5.text_proj.bias,
                       t5 @ v5.text_proj_t5.weight.T + v5.text_proj_t5.bias], dim=1)  # [B, 7 + 9, D]
    with torch.no_grad():
        got = v5(latents, timestep, bert, text_states_t5=t5)
        expected = plain(latents, timestep, joint)
        # Text tokens get no rotary embedding and no mask and are dropped at the output: their order does not
        # matter (reference, "V5 facts"); the reference order is kept anyway.
        swapped = plain(latents, timestep, torch.cat([joint[:, 7:], joint[:, :7]], dim=1))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(swapped, expected, atol=1e-5, rtol=1e-5)


def test_text_streams_are_checked_against_the_family():
    v5_config = transformer_config_from_dict(dict(TINY_TRANSFORMER, text_embed_dim_t5=T5_DIM,
                                                  add_norm_text_encoder=False), "diffusers")
    v5 = EasyAnimateTransformer(v5_config, dtype=torch.float32)
    latents, timestep, bert, _ = transformer_inputs(v5_config, h=8, w=12)
    with pytest.raises(ValueError, match=r"text_states_t5: none; the EasyAnimate V5 .* expects \[2, L, 40\]"):
        v5(latents, timestep, bert)
    with pytest.raises(ValueError, match=r"text_states_t5: shape \(2, 9, 24\)"):
        v5(latents, timestep, bert, text_states_t5=torch.zeros(2, 9, 24))
    v51 = diffusers_transformer()
    ours = EasyAnimateTransformer(transformer_config_from_dict(dict(v51.config), "diffusers"), dtype=torch.float32)
    with pytest.raises(ValueError, match="text_states_t5 were given to the EasyAnimate V5.1"):
        ours(latents, timestep, bert, text_states_t5=_t5_states())


def test_v5_variants_and_control_without_reference_slot():
    def config(channels, **extra):
        return transformer_config_from_dict(dict(in_channels=channels, text_embed_dim=1024, text_embed_dim_t5=2048,
                                                 add_norm_text_encoder=False, **extra), "diffusers")

    assert [config(c).variant for c in (16, 33, 32)] == ["t2v", "inp", "control"]
    assert config(32).variant_description == "EasyAnimate V5 12B Control model"
    assert "no reference-image slot" in config(32).expected_inputs
    assert config(48).variant == "custom"  # 48 channels is a V5.1 Control layout, never a V5 one
    assert config(33, num_layers=36, mmdit_layers=18).variant_description == \
        "EasyAnimate V5 7B InP (image-to-video) model"


def test_original_layout_default_t5_width():
    """The original class defaults text_embed_dim_t5 to 4096: a config omitting it builds a T5 projection."""
    config = transformer_config_from_dict({"text_embed_dim": 1024}, "original")
    assert config.text_embed_dim_t5 == 4096 and config.family == "V5"
    assert transformer_config_from_dict({"text_embed_dim_t5": None}, "original").family == "V5.1"
