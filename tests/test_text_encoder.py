"""Qwen2-VL prompt encoding against diffusers' EasyAnimatePipeline.encode_prompt on tiny local components."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from easyanimate_core import ModelFormatError
from easyanimate_core.demo import write_demo_text_encoder, write_demo_tokenizer
from easyanimate_core.text_encoder import chat_text, load_text_encoder, released_position_ids


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen")
    tokenizer_dir = write_demo_tokenizer(root / "tokenizer")
    from transformers import AutoTokenizer

    write_demo_text_encoder(root / "text_encoder", hidden_size=64, vocab_size=len(AutoTokenizer.from_pretrained(
        str(tokenizer_dir))))
    return root


def _diffusers_embeddings(model_dir, prompt):
    from diffusers import EasyAnimatePipeline
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    pipe = SimpleNamespace(
        text_encoder=Qwen2VLForConditionalGeneration.from_pretrained(str(model_dir / "text_encoder")).eval(),
        tokenizer=AutoTokenizer.from_pretrained(str(model_dir / "tokenizer")),
        transformer=SimpleNamespace(dtype=torch.float32), _execution_device=torch.device("cpu"),
        enable_text_attention_mask=True,
    )
    states, _, mask, _ = EasyAnimatePipeline.encode_prompt(
        pipe, prompt, device=torch.device("cpu"), dtype=torch.float32, num_images_per_prompt=1,
        do_classifier_free_guidance=False)
    return states, mask


def test_chat_template_renders_the_qwen_conversation(model_dir):
    encoder = load_text_encoder(model_dir, dtype=torch.float32)
    assert chat_text(encoder.tokenizer, "A cat") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nA cat<|im_end|>\n"
        "<|im_start|>assistant\n")


@pytest.mark.parametrize("prompt", ["A cat walks on the grass, realistic style.", "", "扭曲的身体，肢体残缺"])
def test_embeddings_match_diffusers_encode_prompt(model_dir, prompt):
    encoder = load_text_encoder(model_dir, dtype=torch.float32)
    ours = encoder.encode([prompt])
    states, mask = _diffusers_embeddings(model_dir, prompt)
    assert ours.states.shape == (1, 256, 64) and ours.mask.shape == (1, 256)
    assert torch.equal(ours.mask, mask)
    real = mask[0].bool()
    # Real tokens agree with diffusers on any transformers. Pads do not: current transformers number the pads'
    # positions on, the releases the weights were trained with gave them all position 1 (see the next test).
    torch.testing.assert_close(ours.states[0, real], states[0, real], atol=1e-5, rtol=1e-5)


def test_each_prompt_is_encoded_on_its_own(model_dir):
    encoder = load_text_encoder(model_dir, dtype=torch.float32)
    both = encoder.encode(["a dog runs", "city lights at night"])
    for i, prompt in enumerate(["a dog runs", "city lights at night"]):
        alone = encoder.encode([prompt])
        torch.testing.assert_close(both.states[i], alone.states[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(both.mask[i], alone.mask[0])


def test_only_the_needed_part_of_qwen_is_loaded(model_dir):
    encoder = load_text_encoder(model_dir, dtype=torch.bfloat16)
    names = [n for n, _ in encoder.named_parameters()]
    assert not any("visual" in n or "lm_head" in n for n in names)
    assert len(encoder.language_model.layers) == 1  # of 2: the last layer only feeds the unused last state
    assert encoder.dtype == torch.bfloat16
    assert encoder.language_model.rotary_emb.inv_freq.dtype == torch.float32
    assert encoder.encode(["x"]).states.dtype == torch.bfloat16


def test_a_text_encoder_of_another_family_is_refused(tmp_path):
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip_text_model", "hidden_size": 64}))
    with pytest.raises(ModelFormatError, match="'clip_text_model' model: an EasyAnimate text_encoder/ is Qwen2-VL "
                                               "\\(V5.1\\) or Bert with an mT5 encoder"):
        load_text_encoder(tmp_path)
    # Bert alone is half of a V5 folder (tests/test_v5_models.py loads whole ones).
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    with pytest.raises(ModelFormatError, match="V5's Bert text encoder, which needs the mT5 encoder beside it"):
        load_text_encoder(tmp_path)


def test_bad_prompt_type(model_dir):
    encoder = load_text_encoder(model_dir, dtype=torch.float32)
    with pytest.raises(ValueError, match="expected a list of strings"):
        encoder.encode([1, 2])


def test_pad_states_match_the_transformers_release_the_weights_were_trained_with(tmp_path):
    """A frozen output of transformers 4.51.3 (tests/data/qwen2vl_transformers_4.51/README.md): the DiT attends to
    all 256 tokens, pads included, so their states must be the ones the model saw in training."""
    import shutil

    from safetensors.torch import load_file

    data = Path(__file__).parent / "data" / "qwen2vl_transformers_4.51"
    shutil.copytree(data, tmp_path / "text_encoder")
    write_demo_tokenizer(tmp_path / "tokenizer")
    encoder = load_text_encoder(tmp_path, dtype=torch.float32)
    reference = load_file(data / "reference.safetensors")
    mask = reference["attention_mask"]
    with torch.inference_mode():
        ours = encoder.language_model(input_ids=reference["input_ids"], attention_mask=mask,
                                      position_ids=released_position_ids(mask), use_cache=False).last_hidden_state
        default = encoder.language_model(input_ids=reference["input_ids"], attention_mask=mask,
                                         use_cache=False).last_hidden_state
    expected = reference["hidden_states_minus_2"]
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    real = mask[0].bool()
    assert torch.equal(default[0, real], ours[0, real])
    assert (default[0, ~real] - expected[0, ~real]).abs().max() > 1e-5  # without the released positions pads drift
