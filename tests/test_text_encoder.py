"""Qwen2-VL prompt encoding against diffusers' EasyAnimatePipeline.encode_prompt on tiny local components."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from easyanimate_core import ModelFormatError
from easyanimate_core.demo import write_demo_text_encoder, write_demo_tokenizer
from easyanimate_core.text_encoder import chat_text, load_text_encoder


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
    torch.testing.assert_close(ours.states, states, atol=1e-5, rtol=1e-5)  # pads included: the DiT attends to them


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
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    with pytest.raises(ModelFormatError, match="'bert' model, not Qwen2-VL"):
        load_text_encoder(tmp_path)


def test_bad_prompt_type(model_dir):
    encoder = load_text_encoder(model_dir, dtype=torch.float32)
    with pytest.raises(ValueError, match="expected a list of strings"):
        encoder.encode([1, 2])
