"""Loaders: both layouts, sharded files, key conversion, config defaults, and every bad-input case."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import diffusers_transformer, save_original_layout

from easyanimate_core import (
    CorruptWeightsError,
    ModelFormatError,
    convert_transformer_key,
    convert_transformer_state_dict,
    load_transformer,
    load_vae,
    transformer_config_from_dict,
)
from easyanimate_core.loading import detect_transformer_layout


@pytest.fixture(scope="module")
def reference():
    return diffusers_transformer(in_channels=33, num_layers=2, mmdit_layers=1)


@pytest.fixture()
def original_folder(tmp_path, reference):
    return save_original_layout(reference, tmp_path / "model" / "transformer")


def test_key_conversion_table():
    pairs = {
        "transformer_blocks.3.attn1.add_q_proj.weight": "transformer_blocks.3.attn2.to_q.weight",
        "transformer_blocks.3.attn1.add_k_proj.bias": "transformer_blocks.3.attn2.to_k.bias",
        "transformer_blocks.3.attn1.add_v_proj.weight": "transformer_blocks.3.attn2.to_v.weight",
        "transformer_blocks.3.attn1.norm_added_q.weight": "transformer_blocks.3.attn2.norm_q.weight",
        "transformer_blocks.3.attn1.norm_added_k.bias": "transformer_blocks.3.attn2.norm_k.bias",
        "transformer_blocks.12.attn1.to_add_out.weight": "transformer_blocks.12.attn2.to_out.0.weight",
    }
    for diffusers_key, original_key in pairs.items():
        assert convert_transformer_key(diffusers_key, "diffusers", "original") == original_key
        assert convert_transformer_key(original_key, "original", "diffusers") == diffusers_key
    for same in ("transformer_blocks.0.attn1.to_q.weight", "transformer_blocks.0.attn1.to_out.0.bias",
                 "text_proj.0.weight", "proj.weight", "transformer_blocks.1.txt_ff.net.2.weight"):
        assert convert_transformer_key(same, "diffusers", "original") == same
        assert convert_transformer_key(same, "original", "diffusers") == same


def test_state_dict_round_trip_is_lossless(reference):
    state = reference.state_dict()
    there = convert_transformer_state_dict(state, "diffusers", "original")
    back = convert_transformer_state_dict(there, "original", "diffusers")
    assert back.keys() == state.keys()
    assert any(".attn2." in k for k in there) and not any("add_q_proj" in k for k in there)
    assert all(back[k] is state[k] for k in state)


def test_layout_detection(reference):
    keys = list(reference.state_dict())
    assert detect_transformer_layout(keys, {}) == "diffusers"
    assert detect_transformer_layout(convert_transformer_state_dict(dict.fromkeys(keys), "diffusers", "original"),
                                     {}) == "original"
    no_mmdit = [k for k in keys if "transformer_blocks.0." not in k]
    assert detect_transformer_layout(no_mmdit, {"swa_layers": None}) == "original"
    assert detect_transformer_layout(no_mmdit, {}) == "diffusers"


def test_config_defaults_follow_the_detected_layout():
    original = transformer_config_from_dict({"text_embed_dim_t5": None}, "original")
    diffusers = transformer_config_from_dict({}, "diffusers")
    assert (original.num_attention_heads, original.num_layers, original.text_embed_dim) == (30, 30, 4096)
    assert original.mmdit_layers == 30 and not original.add_noise_in_inpaint_model
    assert (diffusers.num_attention_heads, diffusers.num_layers, diffusers.mmdit_layers) == (48, 48, 48)
    assert diffusers.text_embed_dim == 3584 and diffusers.add_noise_in_inpaint_model


def test_unknown_fields_are_logged_and_ignored(caplog):
    with caplog.at_level(logging.INFO, logger="easyanimate_core.config"):
        config = transformer_config_from_dict({"in_channels": 48, "brand_new_field": 1}, "diffusers")
    assert config.variant == "control"
    assert "brand_new_field" in caplog.text


@pytest.mark.parametrize(
    "field, value, message",
    [("num_layers", -1, "'num_layers' = -1"), ("in_channels", "33", "'in_channels' = '33'"),
     ("norm_eps", 0, "'norm_eps' = 0"), ("activation_fn", "gelu", "'activation_fn' = 'gelu'"),
     ("text_embed_dim_t5", 0, "'text_embed_dim_t5' = 0"), ("attention_head_dim", 20, "multiple of 8")],
)
def test_invalid_config_values_name_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        transformer_config_from_dict({field: value}, "diffusers", source="x/config.json")


def test_t5_projection_beside_the_v51_text_norm_is_refused():
    with pytest.raises(ValueError, match="'text_embed_dim_t5' = 2048 in x/config.json.*mixes the two"):
        transformer_config_from_dict({"text_embed_dim_t5": 2048, "add_norm_text_encoder": True}, "diffusers",
                                     source="x/config.json")


def test_sharded_checkpoint_with_index(tmp_path, reference, original_folder):
    state = convert_transformer_state_dict(reference.state_dict(), "diffusers", "original")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((original_folder / "config.json").read_text())
    keys = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: state[k].contiguous() for k in shard_keys}, sharded / name)
        weight_map.update(dict.fromkeys(shard_keys, name))
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    single = load_transformer(original_folder, dtype=torch.float32)
    split = load_transformer(sharded, dtype=torch.float32)
    for (name, a), (_, b) in zip(single.state_dict().items(), split.state_dict().items()):
        assert torch.equal(a, b), name


def test_weights_land_in_the_target_dtype_without_a_second_copy(original_folder):
    model = load_transformer(original_folder, dtype=torch.float16)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(p.is_meta for p in model.parameters())


# --- bad input -------------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_transformer(tmp_path / "nope")


def test_folder_without_config(tmp_path):
    (tmp_path / "transformer").mkdir()
    with pytest.raises(ModelFormatError, match="No config.json in .*transformer/config.json inside"):
        load_transformer(tmp_path)


def test_config_of_another_model_family(original_folder):
    config = json.loads((original_folder / "config.json").read_text())
    config["_class_name"] = "WanTransformer3DModel"
    (original_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="WanTransformer3DModel.*another model family"):
        load_transformer(original_folder)


def test_vae_folder_given_as_transformer(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLMagvit"}))
    with pytest.raises(ModelFormatError, match="AutoencoderKLMagvit.*not an EasyAnimate transformer"):
        load_transformer(tmp_path)


def test_config_not_json(original_folder):
    (original_folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_transformer(original_folder)


def _rewrite_weights(folder, edit):
    path = folder / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_missing_tensors_are_listed(original_folder):
    _rewrite_weights(original_folder, lambda s: [s.pop(k) for k in list(s) if k.startswith("norm_out.")])
    with pytest.raises(ModelFormatError, match=r"4 missing tensors \(first: \['norm_out.linear.bias'"):
        load_transformer(original_folder)


def test_unexpected_tensors_are_listed(original_folder):
    _rewrite_weights(original_folder, lambda s: s.update({"clip_proj.weight": torch.zeros(3)}))
    with pytest.raises(ModelFormatError, match=r"1 unexpected tensors \(first: \['clip_proj.weight'\]"):
        load_transformer(original_folder)


def test_shape_mismatch_is_listed(original_folder):
    config = json.loads((original_folder / "config.json").read_text())
    config["in_channels"] = 48  # weights are InP (33 channels)
    (original_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=r"shape mismatches.*proj.weight: file \(32, 33, 2, 2\), model \(32, 48"):
        load_transformer(original_folder)


def test_truncated_safetensors(original_folder):
    path = original_folder / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptWeightsError, match=f"{path}.*truncated or corrupt"):
        load_transformer(original_folder)


def test_garbage_safetensors(original_folder):
    path = original_folder / "diffusion_pytorch_model.safetensors"
    path.write_bytes(b"<html>404 Not Found</html>" * 10)
    with pytest.raises(CorruptWeightsError, match="header length"):
        load_transformer(original_folder)


def test_only_bin_weights(original_folder):
    (original_folder / "diffusion_pytorch_model.safetensors").rename(original_folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelFormatError, match=r"No .safetensors weights.*diffusion_pytorch_model.bin"):
        load_transformer(original_folder)


def test_index_naming_a_missing_shard(original_folder):
    index = {"weight_map": {"proj.weight": "diffusion_pytorch_model-00001-of-00009.safetensors"}}
    (original_folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFormatError, match="00001-of-00009.*Download the missing files"):
        load_transformer(original_folder)


def test_vae_loads_from_a_model_folder_in_both_layouts(tmp_path):
    from diffusers import AutoencoderKLMagvit
    from tiny_models import randomize_

    torch.manual_seed(0)
    reference = AutoencoderKLMagvit(block_out_channels=[8, 8, 8, 8], norm_num_groups=4, layers_per_block=1)
    randomize_(reference, seed=0).eval()
    reference.save_pretrained(tmp_path / "vae")
    vae = load_vae(tmp_path, dtype=torch.float32)
    assert vae.scaling_factor == pytest.approx(0.7125)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(vae.state_dict()[name], tensor), name
    with pytest.raises(ModelFormatError, match="EasyAnimateTransformer3DModel.*not an EasyAnimate VAE"):
        (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "EasyAnimateTransformer3DModel"}))
        load_vae(tmp_path)
