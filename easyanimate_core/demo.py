"""A tiny EasyAnimate model with random weights, written as a real model folder (original layout).

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


def demo_transformer_config(variant: str = "t2v") -> TransformerConfig:
    if variant not in DEMO_VARIANT_CHANNELS:
        raise ValueError(f"demo variant {variant!r}: expected one of {sorted(DEMO_VARIANT_CHANNELS)}")
    return TransformerConfig(
        in_channels=DEMO_VARIANT_CHANNELS[variant], num_attention_heads=4, attention_head_dim=16, num_layers=2,
        mmdit_layers=2, time_embed_dim=64, text_embed_dim=64, add_norm_text_encoder=True,
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


_PIPELINE_CLASS = {"t2v": "EasyAnimatePipeline", "inp": "EasyAnimateInpaintPipeline",
                   "control": "EasyAnimateControlPipeline", "camera": "EasyAnimateControlPipeline"}


def write_demo_model(folder: str | Path, variant: str = "t2v", seed: int = 0) -> Path:
    """Write a complete tiny random model folder in the original layout under ``folder``.

    ``transformer/``, ``vae/``, ``text_encoder/`` (a tiny Qwen2-VL), ``tokenizer/``, ``scheduler/`` and
    ``model_index.json``, as in the released folders.
    """
    folder = Path(folder)
    config = demo_transformer_config(variant)
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
    _write_component(folder / "transformer", "EasyAnimateTransformer3DModel", config, transformer,
                     {"enable_text_attention_mask": True, "resize_inpaint_mask_directly": True})
    _write_component(folder / "vae", "AutoencoderKLMagvit", DEMO_VAE, vae,
                     {"cache_mag_vae": True, "mid_block_use_attention": False})
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
