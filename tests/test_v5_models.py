"""EasyAnimate V5 (Bert + mT5) models: the two-stream text projection, V5 prompt encoding, loading and refusals.

Tolerances: fp32 tiny random models on the CPU. 1e-4 against diffusers' transformer (as tests/test_transformer.py:
the same formulas, other GEMM shapes and op order); 1e-5 against the hand-written text projection (the same model
blocks, only the projection written out); 1e-6 for the text encoders, which run the very transformers modules the
reference runs (only the loading path differs; block swap and offload: bit-exact); fp8_cast storage: relative
error below 10% (3-bit mantissa weights).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tiny_models import TINY_TRANSFORMER, diffusers_transformer, randomize_, save_original_layout, transformer_inputs

from easyanimate_core import (ModelFormatError, convert_transformer_state_dict, load_transformer,
                              transformer_config_from_dict)
from easyanimate_core.__main__ import main as cli_main
from easyanimate_core.loading import inspect_model, inspect_transformer
from easyanimate_core.memory import Placement
from easyanimate_core.text_encoder import PromptEmbeddings, load_text_encoder
from easyanimate_core.text_encoder_v5 import V5TextEncoder
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


# --- V5 folders: demo model, loading, text encoding ---------------------------------------------------------------

PROMPTS = ["A cat walks on the grass, realistic style.", "扭曲的身体，肢体残缺", ""]


@pytest.fixture(scope="module")
def v5_demo(tmp_path_factory):
    """V5 t2v demo folder written through the command line (make-demo-model --version 5)."""
    folder = tmp_path_factory.mktemp("v5") / "EasyAnimateV5-demo"
    assert cli_main(["make-demo-model", str(folder), "--version", "5", "--variant", "t2v"]) == 0
    return folder


@pytest.fixture(scope="module")
def v51_demo(tmp_path_factory):
    from easyanimate_core.demo import write_demo_model

    return write_demo_model(tmp_path_factory.mktemp("v51") / "EasyAnimateV5.1-demo", variant="t2v")


def test_demo_folder_has_the_released_v5_parts(v5_demo):
    names = sorted(p.name for p in v5_demo.iterdir())
    assert names == ["model_index.json", "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                     "transformer", "vae"]
    assert json.loads((v5_demo / "text_encoder" / "config.json").read_text())["model_type"] == "bert"
    assert json.loads((v5_demo / "text_encoder_2" / "config.json").read_text())["model_type"] == "mt5"
    assert (v5_demo / "tokenizer" / "vocab.txt").is_file()
    scheduler = json.loads((v5_demo / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler" and scheduler["beta_schedule"] == "scaled_linear"


@pytest.mark.parametrize("variant, channels", sorted(V5_VARIANTS.items()))
def test_demo_variants_load_through_the_real_loader_and_inspection(tmp_path, variant, channels):
    folder = tmp_path / variant
    assert cli_main(["make-demo-model", str(folder), "--version", "5", "--variant", variant]) == 0
    config = inspect_model(folder)
    assert (config.family, config.variant, config.in_channels) == ("V5", variant, channels)
    assert config.variant_description.startswith("EasyAnimate V5 2-layer ")
    model = load_transformer(folder, dtype=torch.float32)
    assert model.config == config and model.text_proj_t5 is not None


def test_demo_refuses_a_variant_v5_does_not_have(tmp_path, caplog):
    assert cli_main(["make-demo-model", str(tmp_path / "x"), "--version", "5", "--variant", "camera"]) == 2
    assert "demo variant 'camera' for EasyAnimate V5" in caplog.text


def _as_diffusers_layout(source, target):
    """Copy a V5 folder with its transformer in the diffusers layout (keys and config fields)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    transformer = target / "transformer"
    state = load_file(transformer / "diffusion_pytorch_model.safetensors")
    save_file(convert_transformer_state_dict(state, "original", "diffusers"),
              transformer / "diffusion_pytorch_model.safetensors")
    config = json.loads((transformer / "config.json").read_text())
    for field in ("ref_channels", "clip_channels", "swa_layers", "enable_clip_in_inpaint",
                  "add_ref_latent_in_control_model"):
        config.pop(field, None)
    (transformer / "config.json").write_text(json.dumps(config))
    return target


def test_both_layouts_of_a_v5_folder_load_the_same_model(v5_demo, tmp_path):
    diffusers_folder = _as_diffusers_layout(v5_demo, tmp_path / "diffusers")
    original = load_transformer(v5_demo, dtype=torch.float32)
    converted = load_transformer(diffusers_folder, dtype=torch.float32)
    assert inspect_model(diffusers_folder).family == "V5"
    assert original.state_dict().keys() == converted.state_dict().keys()
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, converted.state_dict()[name]), name


def test_t5_width_comes_from_the_weights_when_the_config_omits_it(v5_demo, v51_demo, tmp_path):
    for source, expected in ((v5_demo, 48), (v51_demo, None)):
        folder = tmp_path / source.name
        shutil.copytree(source / "transformer", folder)
        config = json.loads((folder / "config.json").read_text())
        del config["text_embed_dim_t5"]  # the original class would default it to 4096
        (folder / "config.json").write_text(json.dumps(config))
        assert inspect_transformer(folder).text_embed_dim_t5 == expected


def _reference_states(folder, prompts, attention_mask=False):
    """transformers' BertModel / MT5EncoderModel called directly, tokenized as the reference pipeline does."""
    from transformers import AutoTokenizer, BertModel, MT5EncoderModel

    out = []
    for model_class, encoder, tokenizer in ((BertModel, "text_encoder", "tokenizer"),
                                            (MT5EncoderModel, "text_encoder_2", "tokenizer_2")):
        tok = AutoTokenizer.from_pretrained(str(folder / tokenizer))
        model = model_class.from_pretrained(str(folder / encoder)).eval()
        batch = tok(prompts, padding="max_length", max_length=min(tok.model_max_length, 256), truncation=True,
                    return_tensors="pt")
        with torch.no_grad():
            kwargs = {"attention_mask": batch["attention_mask"]} if attention_mask else {}
            out.append(model(input_ids=batch["input_ids"], **kwargs).last_hidden_state)
    return out


def test_v5_prompt_encoding_matches_transformers_called_directly(v5_demo):
    encoder = load_text_encoder(v5_demo, dtype=torch.float32)
    assert isinstance(encoder, V5TextEncoder)
    embeddings = encoder.encode(PROMPTS)
    assert isinstance(embeddings, PromptEmbeddings)
    # Bert: min(77, 256) tokens (HunyuanDiT's tokenizer says 77); mT5: min(256, 256).
    assert embeddings.states.shape == (3, 77, 32) and embeddings.states_t5.shape == (3, 256, 48)
    bert, t5 = _reference_states(v5_demo, PROMPTS)
    torch.testing.assert_close(embeddings.states, bert, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(embeddings.states_t5, t5, atol=1e-6, rtol=1e-6)
    # No attention mask reaches either encoder (enable_text_attention_mask false): with one, the states differ.
    masked_bert, masked_t5 = _reference_states(v5_demo, PROMPTS, attention_mask=True)
    assert (masked_bert - bert).abs().max() > 1e-3 and (masked_t5 - t5).abs().max() > 1e-3


def test_long_prompts_are_truncated_to_each_tokenizer_length(v5_demo):
    encoder = load_text_encoder(v5_demo, dtype=torch.float32)
    (ids, mask), (ids_t5, mask_t5) = encoder.tokenize(["a cat walks " * 200])
    assert ids.shape == (1, 77) and bool(mask.all()) and ids_t5.shape == (1, 256) and bool(mask_t5.all())
    with pytest.raises(ValueError, match="expected a list of strings"):
        encoder.tokenize("a cat")


@pytest.mark.parametrize("mode", ["block_swap", "model_cpu_offload"])
def test_v5_text_encoders_run_under_the_memory_modes(v5_demo, mode):
    encoder = load_text_encoder(v5_demo, dtype=torch.float32)
    expected = encoder.encode(PROMPTS)
    with Placement(mode, torch.device("cpu"), torch.device("cpu")).active(encoder):
        got = encoder.encode(PROMPTS)
    torch.testing.assert_close(got.states, expected.states, atol=0, rtol=0)
    torch.testing.assert_close(got.states_t5, expected.states_t5, atol=0, rtol=0)


def _in_fp8(layer) -> bool:
    return type(layer).__name__ == "QLinear" or layer.weight.dtype == torch.float8_e4m3fn


@pytest.mark.parametrize("kind", ["fp8_cast", "qfloat8"])
def test_fp8_storage_of_the_encoder_linears(v5_demo, kind):
    encoder = load_text_encoder(v5_demo, dtype=torch.float32, fp8=kind)
    t5_block = encoder.text_encoder_2.encoder.block[0]
    assert _in_fp8(encoder.text_encoder.encoder.layer[0].attention.self.query)
    assert _in_fp8(encoder.text_encoder.encoder.layer[1].output.dense)
    assert _in_fp8(t5_block.layer[0].SelfAttention.q) and _in_fp8(t5_block.layer[1].DenseReluDense.wi_0)
    assert not _in_fp8(t5_block.layer[1].DenseReluDense.wo)  # T5 casts its input to wo's dtype
    assert encoder.text_encoder.embeddings.word_embeddings.weight.dtype == torch.float32
    reference = load_text_encoder(v5_demo, dtype=torch.float32).encode(PROMPTS)
    got = encoder.encode(PROMPTS)
    # fp8 (3 mantissa bits) weights: a relative error of a few percent, nothing like a broken layer.
    for a, b in ((got.states, reference.states), (got.states_t5, reference.states_t5)):
        assert torch.isfinite(a).all()
        assert ((a - b).norm() / b.norm()) < 0.1


def test_v5_embeddings_drive_the_v5_transformer(v5_demo):
    encoder = load_text_encoder(v5_demo, dtype=torch.float32)
    model = load_transformer(v5_demo, dtype=torch.float32)
    prompt = encoder.encode(PROMPTS[:1])
    latents = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(latents, torch.tensor([500.0]), prompt.states, text_states_t5=prompt.states_t5)
    assert out.shape == latents.shape and torch.isfinite(out).all()


# --- bad input ----------------------------------------------------------------------------------------------------


def _mixed(tmp_path, transformer_from, rest_from):
    folder = tmp_path / "mixed"
    shutil.copytree(rest_from, folder)
    shutil.rmtree(folder / "transformer")
    shutil.copytree(transformer_from / "transformer", folder / "transformer")
    return folder


def test_v5_transformer_with_a_qwen_text_encoder_is_refused_naming_both(v5_demo, v51_demo, tmp_path):
    folder = _mixed(tmp_path, v5_demo, v51_demo)
    with pytest.raises(ModelFormatError) as error:
        inspect_model(folder)
    message = str(error.value)
    assert "mixes two EasyAnimate families" in message
    assert str(folder / "transformer" / "config.json") in message and "text_embed_dim_t5 = 48" in message
    assert str(folder / "text_encoder") in message and "Qwen2-VL" in message


def test_v51_transformer_with_bert_and_t5_is_refused_naming_both(v5_demo, v51_demo, tmp_path):
    folder = _mixed(tmp_path, v51_demo, v5_demo)
    with pytest.raises(ModelFormatError, match=r"mixes two EasyAnimate families: the transformer .*"
                                               r"transformer/config.json, text_embed_dim_t5 = null.*EasyAnimate V5.1 "
                                               r".* holds Bert \+ mT5 text encoders \(EasyAnimate V5\)"):
        inspect_model(folder)


def test_qwen_folder_with_a_stray_t5_encoder_is_refused(v5_demo, v51_demo, tmp_path):
    folder = tmp_path / "stray"
    shutil.copytree(v51_demo, folder)
    shutil.copytree(v5_demo / "text_encoder_2", folder / "text_encoder_2")
    for call in (inspect_model, load_text_encoder):
        with pytest.raises(ModelFormatError, match="text_encoder/ is Qwen2-VL \\(V5.1\\) but .*text_encoder_2"):
            call(folder)


@pytest.mark.parametrize("missing", ["text_encoder_2", "tokenizer_2"])
def test_v5_folder_without_its_second_encoder_is_refused(v5_demo, tmp_path, missing):
    folder = tmp_path / "incomplete"
    shutil.copytree(v5_demo, folder)
    shutil.rmtree(folder / missing)
    with pytest.raises(ModelFormatError, match=f"needs the mT5 encoder beside it: .*{missing}.* is missing"):
        inspect_model(folder)


def test_encoder_width_that_does_not_fit_the_transformer_is_refused(v5_demo, tmp_path):
    folder = tmp_path / "wide"
    shutil.copytree(v5_demo, folder)
    config_path = folder / "text_encoder_2" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(d_model=64, d_kv=16)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=r"text_encoder_2/config.json gives 64-wide states but the "
                                               r"transformer's text_embed_dim_t5 is 48"):
        inspect_model(folder)


def test_t5_weights_of_another_shape_are_named(v5_demo, tmp_path):
    folder = tmp_path / "shape"
    shutil.copytree(v5_demo, folder)
    config_path = folder / "text_encoder_2" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(d_ff=64)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=r"model.safetensors: tensor 'encoder.block.0.layer.1.DenseReluDense"):
        load_text_encoder(folder, dtype=torch.float32)


def test_activation_estimate_counts_both_text_streams(v5_demo):
    from easyanimate_core.generation import GenerationRequest, PreparedInputs, denoise_activation_bytes
    from easyanimate_core.sampling import Conditioning

    model = load_transformer(v5_demo, dtype=torch.float32)
    prompt = load_text_encoder(v5_demo, dtype=torch.float32).encode(PROMPTS[:1])
    prepared = PreparedInputs(GenerationRequest(width=64, height=64, frames=5), torch.zeros(1, 16, 2, 8, 8),
                              Conditioning(), None)
    expected = model.activation_bytes((1, 16, 2, 8, 8), 77 + 256)
    assert denoise_activation_bytes(model, prepared, prompt) == expected
