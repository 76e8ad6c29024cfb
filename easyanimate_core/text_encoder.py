"""Qwen2-VL prompt encoding as EasyAnimate V5.1 uses it (reference section 4.1), text tower only; the loaders
here hand a V5 folder (Bert + mT5) to ``text_encoder_v5``.

Each prompt becomes its own one-turn chat (the Qwen2-VL template inserts the default system turn), is right-padded
to 256 tokens and run through the language model; the DiT takes the second-to-last hidden state, i.e. the output
of all decoder layers but the last, before the final norm. So the last layer, the final norm, the LM head and the
vision tower are never loaded.

Pad tokens take part in the DiT's attention, so their hidden states matter. They depend on the pads' rotary
positions, which transformers changed: the releases EasyAnimate V5.1 was trained with (4.4x-4.51) gave a
right-padded text-only batch the positions 0..n-1 for real tokens and 1 for every pad; current releases number the
pads on. We pass the old positions explicitly, so the states match the trained behaviour whatever transformers is
installed (checked against a frozen transformers 4.51 output in tests/data).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .loading import ModelFormatError, model_root, read_into, resolve_component, text_encoder_family, weight_files
from .memory import check_fp8_kind, execution_device, store_weights_in
from .ops import adopt_linears
from .safetensors_io import read_header

logger = logging.getLogger(__name__)

MAX_TOKENS = 256
_TEXT_PREFIXES = ("model.language_model.", "model.")  # transformers >= 5 layout, then the released layout


@dataclass(frozen=True)
class PromptEmbeddings:
    """``states`` [B, L, hidden] in the encoder dtype and ``mask`` [B, L] (1 = real token): Qwen2-VL's (V5.1,
    L = 256) or Bert's (V5). A V5 prompt also has ``states_t5`` [B, L5, d_model] of its mT5 encoder; the
    transformer takes them as ``text_states_t5`` (V5 passes no mask anywhere)."""

    states: torch.Tensor
    mask: torch.Tensor
    states_t5: torch.Tensor | None = None


def released_position_ids(mask: torch.Tensor) -> torch.Tensor:
    """[B, L] mask -> [3, B, L] M-RoPE positions as transformers 4.4x-4.51 made them: real tokens 0..n-1, pads 1."""
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return positions.unsqueeze(0).expand(3, -1, -1)


def chat_text(tokenizer, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class QwenTextEncoder(nn.Module):
    """The first N-1 decoder layers of Qwen2-VL's language model plus its tokenizer."""

    # Kept in the model dtype under fp8 storage, as names inside ``language_model``.
    HIGH_PRECISION: tuple[str, ...] = ("embed_tokens", "*norm*", "rotary_emb")

    def __init__(self, language_model: nn.Module, tokenizer, max_tokens: int = MAX_TOKENS):
        super().__init__()
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.max_tokens = min(max_tokens, getattr(tokenizer, "model_max_length", max_tokens) or max_tokens)

    def repeated_blocks(self) -> list[nn.Module]:
        return list(self.language_model.layers)

    @property
    def hidden_size(self) -> int:
        return self.language_model.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return execution_device(self.language_model)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prompt on its own (never one multi-turn conversation): ids and mask [B, max_tokens]."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts = {prompts!r}: expected a list of strings.")
        texts = [chat_text(self.tokenizer, p) for p in prompts]
        batch = self.tokenizer(texts, padding="max_length", max_length=self.max_tokens, truncation=True,
                               return_attention_mask=True, return_tensors="pt", padding_side="right")
        return batch["input_ids"], batch["attention_mask"]

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> PromptEmbeddings:
        ids, mask = self.tokenize(list(prompts))
        ids, mask = ids.to(self.device), mask.to(self.device)
        out = self.language_model(input_ids=ids, attention_mask=mask, position_ids=released_position_ids(mask),
                                  use_cache=False)
        return PromptEmbeddings(states=out.last_hidden_state, mask=mask)


def _chat_template_file(folder: Path) -> str | None:
    path = folder / "chat_template.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    return None


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    folder = Path(path) / "tokenizer" if (Path(path) / "tokenizer").is_dir() else Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"No tokenizer folder at {folder}: the model folder needs its tokenizer/ subfolder.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"Cannot read the tokenizer in {folder} ({exc}). Download the tokenizer/ folder "
                               f"of the model again.") from exc
    if tokenizer.chat_template is None:
        tokenizer.chat_template = _chat_template_file(folder)
    if tokenizer.chat_template is None:
        raise ModelFormatError(f"The tokenizer in {folder} has no chat template (tokenizer_config.json or "
                               f"chat_template.json). Download the tokenizer/ folder of the model again.")
    return tokenizer


def config_error(folder: Path, exc: Exception, what: str = "Qwen2-VL",
                 advice: str = "Download text_encoder/config.json again from the model's release.") -> ModelFormatError:
    """A config error from transformers retold with the file's path and what to do."""
    why = " ".join(str(exc).split()) or type(exc).__name__
    return ModelFormatError(f"The text encoder config {folder / 'config.json'} is not a {what} config that "
                            f"transformers can use ({type(exc).__name__}: {why[:300]}). {advice}")


def _language_model(folder: Path, dtype: torch.dtype):
    """(text config, the language tower minus its last layer on the meta device): every config error, from
    transformers' validation or from building the layers, names the file."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLTextModel

    text_config = _language_model_config(folder)
    try:
        with torch.device("meta"):
            return text_config, Qwen2VLTextModel(text_config).to(dtype)
    except Exception as exc:  # e.g. zero heads, an unknown activation: raised while the layers are built
        raise config_error(folder, exc) from exc


def check_text_encoder(path: str | Path, config=None) -> None:
    """Check a model folder's text encoder configs by building the towers on the meta device: no weight is read.
    With the transformer's ``config``, a V5 folder's encoder widths are checked against it too."""
    if text_encoder_family(path) == "V5":
        from .text_encoder_v5 import check_v5_text_encoders

        check_v5_text_encoders(path, config)
        return
    _language_model(resolve_component(path, "text_encoder"), torch.float32)


def _language_model_config(folder: Path):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises many kinds (validation, OSError, KeyError): retell with the path
        raise config_error(folder, exc) from exc
    if getattr(config, "model_type", None) != "qwen2_vl":
        raise ModelFormatError(
            f"{folder / 'config.json'} describes a {getattr(config, 'model_type', '?')!r} model, not Qwen2-VL: "
            f"EasyAnimate V5.1 needs its Qwen2-VL text_encoder/ folder (V5 folders hold Bert there)."
        )
    text_config = copy.deepcopy(config.text_config)
    if text_config.num_hidden_layers < 2:
        raise ModelFormatError(f"{folder / 'config.json'}: num_hidden_layers = {text_config.num_hidden_layers}, "
                               f"expected at least 2 (the penultimate hidden state is used).")
    text_config.num_hidden_layers -= 1  # the last layer only feeds hidden_states[-1], which is not used
    text_config.layer_types = text_config.layer_types[: text_config.num_hidden_layers]
    return text_config


def load_text_encoder(
    path: str | Path, *, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
    fp8: str | None = None,
):
    """Load the Qwen2-VL language tower (minus its last layer) and the tokenizer of a model folder; for a V5
    folder, its Bert and mT5 encoders (:func:`.text_encoder_v5.load_v5_text_encoder`). Either encodes prompts to
    :class:`PromptEmbeddings`.

    ``fp8`` ("qfloat8" or "fp8_cast", see :mod:`.memory`) stores the linear weights in fp8, each decoder layer
    converted as soon as it is read."""
    if text_encoder_family(path) == "V5":
        from .text_encoder_v5 import load_v5_text_encoder

        return load_v5_text_encoder(path, dtype=dtype, device=device, fp8=fp8)
    try:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRotaryEmbedding
    except ImportError as exc:
        import transformers

        raise ImportError(f"transformers {transformers.__version__} has no Qwen2-VL text model; EasyAnimate needs "
                          f"transformers >= 4.53: run pip install -U 'transformers>=4.53' in ComfyUI's Python."
                          ) from exc

    check_fp8_kind(fp8)
    folder = resolve_component(path, "text_encoder")
    text_config, model = _language_model(folder, dtype)
    model.norm = nn.Identity()
    adopt_linears(model)  # our Linear computes in its input's dtype, so its weight may be stored in fp8
    model.rotary_emb = Qwen2VLRotaryEmbedding(config=text_config).to(device)  # fp32 inverse frequencies

    files = weight_files(folder)
    wanted = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    entries = {}
    for entry in (e for f in files for e in read_header(f)):
        for prefix in _TEXT_PREFIXES:
            if entry.name.startswith(prefix) and not entry.name.startswith("model.visual."):
                name = entry.name[len(prefix):]
                if name in wanted:
                    entries[name] = entry
                break
    missing = sorted(set(wanted) - set(entries))
    if missing:
        raise ModelFormatError(f"The text encoder weights in {folder} lack {len(missing)} tensors of the language "
                               f"model (first: {missing[:5]}). Download the text_encoder/ folder again.")
    for name, entry in entries.items():
        if entry.shape != wanted[name]:
            raise ModelFormatError(f"{entry.file}: tensor '{entry.name}' has shape {entry.shape}, the config asks "
                                   f"for {wanted[name]}. Download the folder again.")
    if fp8 == "fp8_cast":
        store_weights_in(model, torch.float8_e4m3fn, QwenTextEncoder.HIGH_PRECISION)  # still on meta: a build choice
    read_into(model, entries, dtype=dtype, device=device, fp8=fp8, keep=QwenTextEncoder.HIGH_PRECISION)
    logger.info("Loaded the Qwen2-VL text tower (%d of %d layers) from %s as %s%s on %s",
                text_config.num_hidden_layers, text_config.num_hidden_layers + 1, folder, dtype,
                f" with {fp8} linears" if fp8 else "", device)
    return QwenTextEncoder(model.eval().requires_grad_(False), load_tokenizer(model_root(folder, "text_encoder")))
