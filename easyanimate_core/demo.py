"""A tiny EasyAnimate model with random weights, written as a real model folder (original layout): V5.1 (Qwen2-VL
text encoder, flow scheduler) or V5 (Bert + mT5 text encoders, DDIM scheduler).

It lets every command, workflow and test run end to end through the real loading code on a machine without the
released weights. Its output is noise-like by construction: it proves the plumbing, not the picture.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from .config import TransformerConfig, VAEConfig
from .transformer import EasyAnimateTransformer
from .vae import MagvitVAE

DEMO_VARIANT_CHANNELS = {"t2v": 16, "inp": 33, "control": 48, "camera": 38}
DEMO_V5_VARIANT_CHANNELS = {"t2v": 16, "inp": 33, "control": 32}  # V5 Control: no reference-image slot
DEMO_VERSIONS = ("5.1", "5")

DEMO_VAE = VAEConfig(block_out_channels=(16, 32, 32, 32), norm_num_groups=8, layers_per_block=1)

SCHEDULER_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

# V5 ships a DDPM-family scheduler config whose content is not public (reference section 5.1): these are the
# Stable-Diffusion-style DDIM values (scaled_linear 0.00085..0.012) with epsilon prediction, chosen for the demo
# only; a real V5 folder's own file decides its beta schedule and prediction type.
SCHEDULER_CONFIG_V5 = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def demo_transformer_config(variant: str = "t2v", version: str = "5.1") -> TransformerConfig:
    if version not in DEMO_VERSIONS:
        raise ValueError(f"demo version {version!r}: expected one of {DEMO_VERSIONS}")
    channels = DEMO_V5_VARIANT_CHANNELS if version == "5" else DEMO_VARIANT_CHANNELS
    if variant not in channels:
        raise ValueError(f"demo variant {variant!r} for EasyAnimate V{version}: expected one of {sorted(channels)}")
    # V5: a Bert (32 wide) and an mT5 (48 wide) text stream, no RMSNorm in front of text_proj, V5 config flags.
    text = (dict(text_embed_dim=32, text_embed_dim_t5=48, add_norm_text_encoder=False,
                 add_noise_in_inpaint_model=False, add_ref_latent_in_control_model=False) if version == "5"
            else dict(text_embed_dim=64, add_norm_text_encoder=True))
    return TransformerConfig(
        in_channels=channels[variant], num_attention_heads=4, attention_head_dim=16, num_layers=2,
        mmdit_layers=2, time_embed_dim=64, **text,
    ).validate("the demo model")


def _write_component(folder: Path, class_name: str, config, module: torch.nn.Module, extra_config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fields = {"_class_name": class_name, **dataclasses.asdict(config), **extra_config}
    (folder / "config.json").write_text(json.dumps(fields, indent=2), encoding="utf-8")
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, folder / "diffusion_pytorch_model.safetensors")


QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_DEMO_CORPUS = [
    "You are a helpful assistant.",
    "A cat walks on the grass, realistic style. A dog runs on the beach at sunset.",
    "扭曲的身体，肢体残缺，文本字幕，漫画，静止，丑陋，错误，乱码。",
    "camera pans left over a mountain lake; waves, clouds, city lights at night",
]


def write_demo_tokenizer(folder: str | Path) -> Path:
    """A byte-level BPE tokenizer in the Qwen2 style (same special tokens and chat template), trained locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_DEMO_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=32768)
    fast.chat_template = QWEN_CHAT_TEMPLATE
    folder = Path(folder)
    fast.save_pretrained(str(folder))
    return folder


def write_demo_text_encoder(folder: str | Path, hidden_size: int, vocab_size: int, seed: int = 0) -> Path:
    """A tiny random Qwen2-VL (text and vision towers, like the released folder) saved with transformers."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    heads = 4
    head_dim = hidden_size // heads
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=1,
                         rope_scaling={"type": "mrope", "mrope_section": [head_dim // 4, head_dim // 8,
                                                                          head_dim // 8]},
                         bos_token_id=0, eos_token_id=2, pad_token_id=0),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=hidden_size, num_heads=2, mlp_ratio=2,
                           in_chans=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
    )
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's random state
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).eval()
    folder = Path(folder)
    model.save_pretrained(str(folder))
    return folder


_V5_CORPUS_WORDS = ("a", "cat", "walks", "on", "the", "grass", "dog", "runs", "beach", "at", "sunset", "camera",
                    "pans", "left", "over", "mountain", "lake", "realistic", "style")


def write_demo_bert_tokenizer(folder: str | Path) -> Path:
    """A BertTokenizer over a written vocab.txt: the special tokens, the demo corpus's characters (Bert splits CJK
    text into characters) and a few English words; 77 tokens at most, like HunyuanDiT's."""
    from transformers import BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted({c for text in _DEMO_CORPUS for c in text.lower() if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *_V5_CORPUS_WORDS]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt"), model_max_length=77).save_pretrained(str(folder))
    return folder


def write_demo_t5_tokenizer(folder: str | Path) -> Path:
    """A T5-style tokenizer (Unigram over Metaspace pieces, ``</s>`` appended, ``<pad>`` = 0) trained locally on
    the demo corpus and saved with transformers' T5 tokenizer class."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tokenizer.train_from_iterator(_DEMO_CORPUS, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))])
    fast = T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=256)
    folder = Path(folder)
    fast.save_pretrained(str(folder))
    return folder


def write_demo_v5_text_encoders(folder: str | Path, bert_width: int, t5_width: int, seed: int = 0) -> Path:
    """Tiny random Bert (``text_encoder/``) and mT5 encoder (``text_encoder_2/``) with their tokenizers."""
    from transformers import BertConfig, BertModel, MT5Config, MT5EncoderModel

    folder = Path(folder)
    bert_vocab = len(write_demo_bert_tokenizer(folder / "tokenizer").joinpath("vocab.txt")
                     .read_text(encoding="utf-8").splitlines())
    t5_dir = write_demo_t5_tokenizer(folder / "tokenizer_2")
    t5_vocab = len(json.loads((t5_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"])
    bert_config = BertConfig(vocab_size=bert_vocab, hidden_size=bert_width, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=2 * bert_width, max_position_embeddings=128)
    t5_config = MT5Config(vocab_size=t5_vocab, d_model=t5_width, d_kv=t5_width // 4, d_ff=2 * t5_width,
                          num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                          relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
                          tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's random state
        torch.manual_seed(seed)
        bert, t5 = BertModel(bert_config).eval(), MT5EncoderModel(t5_config).eval()
    bert.save_pretrained(str(folder / "text_encoder"))
    t5.save_pretrained(str(folder / "text_encoder_2"))
    return folder


_PIPELINE_CLASS = {"t2v": "EasyAnimatePipeline", "inp": "EasyAnimateInpaintPipeline",
                   "control": "EasyAnimateControlPipeline", "camera": "EasyAnimateControlPipeline"}


def write_demo_model(folder: str | Path, variant: str = "t2v", seed: int = 0, version: str = "5.1") -> Path:
    """Write a complete tiny random model folder in the original layout under ``folder``.

    ``transformer/``, ``vae/``, ``text_encoder/`` and ``tokenizer/`` (a tiny Qwen2-VL; for ``version`` "5" a tiny
    Bert, with the mT5 encoder in ``text_encoder_2/`` and ``tokenizer_2/``), ``scheduler/`` and
    ``model_index.json``, as in the released folders.
    """
    folder = Path(folder)
    config = demo_transformer_config(variant, version)
    try:
        return _write_demo_model(folder, variant, config, seed)
    except (OSError, SafetensorError) as exc:  # safetensors' own error for a failed write (disk full, size limit)
        raise OSError(f"Cannot write the demo model to {folder}: {exc}. Check the free space and the write "
                      f"permission there (for the built-in demo, of the temporary folder: TMPDIR), or pass "
                      f"--model.") from None


def _write_demo_model(folder: Path, variant: str, config: TransformerConfig, seed: int) -> Path:
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's random state
        torch.manual_seed(seed)
        transformer, vae = EasyAnimateTransformer(config), MagvitVAE(DEMO_VAE)
    v5 = config.family == "V5"
    _write_component(folder / "transformer", "EasyAnimateTransformer3DModel", config, transformer,
                     {"enable_text_attention_mask": not v5, "resize_inpaint_mask_directly": True})
    _write_component(folder / "vae", "AutoencoderKLMagvit", DEMO_VAE, vae,
                     {"cache_mag_vae": True, "mid_block_use_attention": False})
    if v5:
        return _write_v5_parts(folder, variant, config, seed)
    tokenizer_dir = write_demo_tokenizer(folder / "tokenizer")
    vocab_size = len(json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"])
    write_demo_text_encoder(folder / "text_encoder", hidden_size=config.text_embed_dim, vocab_size=vocab_size,
                            seed=seed)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    index = {"_class_name": _PIPELINE_CLASS[variant], "transformer": ["easyanimate", "EasyAnimateTransformer3DModel"],
             "vae": ["diffusers", "AutoencoderKLMagvit"], "text_encoder": ["transformers",
                                                                          "Qwen2VLForConditionalGeneration"],
             "tokenizer": ["transformers", "Qwen2Tokenizer"], "scheduler": ["diffusers",
                                                                           "FlowMatchEulerDiscreteScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def _write_v5_parts(folder: Path, variant: str, config: TransformerConfig, seed: int) -> Path:
    write_demo_v5_text_encoders(folder, config.text_embed_dim, config.text_embed_dim_t5, seed=seed)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG_V5, indent=2))
    index = {"_class_name": _PIPELINE_CLASS[variant], "transformer": ["easyanimate", "EasyAnimateTransformer3DModel"],
             "vae": ["diffusers", "AutoencoderKLMagvit"], "text_encoder": ["transformers", "BertModel"],
             "tokenizer": ["transformers", "BertTokenizer"], "text_encoder_2": ["transformers", "T5EncoderModel"],
             "tokenizer_2": ["transformers", "T5Tokenizer"], "scheduler": ["diffusers", "DDIMScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
