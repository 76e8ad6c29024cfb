"""Bert + mT5 prompt encoding as EasyAnimate V5 uses it (reference section 4.2).

``text_encoder/`` is HunyuanDiT's bilingual CLIP text tower (a BertModel, hidden 1024) with its ``tokenizer/``;
``text_encoder_2/`` is the mT5 encoder (a T5EncoderModel, d_model 2048) with ``tokenizer_2/``. Each tokenizer pads
and truncates to min(model_max_length, 256) tokens; V5 runs with ``enable_text_attention_mask`` false, so neither
encoder receives the attention mask (pad tokens attend and are attended to) and the transformer gets none either.
The output is each encoder's ``last_hidden_state``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from .config import TransformerConfig
from .loading import ModelFormatError, model_root, read_into, resolve_component, weight_files
from .memory import check_fp8_kind, execution_device, store_weights_in
from .ops import adopt_linears
from .safetensors_io import read_header
from .text_encoder import PromptEmbeddings, config_error

logger = logging.getLogger(__name__)

MAX_TOKENS = 256
# Kept in the model dtype under fp8 storage. T5's feed-forward casts its input to ``wo``'s weight dtype (and
# transformers keeps ``wo`` in fp32 for fp16), so ``wo`` stays high; embeddings and norms are no Linears.
HIGH_PRECISION: tuple[str, ...] = ("*.wo",)
_BERT_PREFIXES = ("", "bert.")  # a BertModel's own file, or one saved from a model that wraps it


class V5TextEncoder(nn.Module):
    """The Bert and mT5 encoders of an EasyAnimate V5 folder and their tokenizers."""

    HIGH_PRECISION = HIGH_PRECISION

    def __init__(self, text_encoder: nn.Module, tokenizer, text_encoder_2: nn.Module, tokenizer_2,
                 max_tokens: int = MAX_TOKENS):
        super().__init__()
        self.text_encoder = text_encoder  # BertModel
        self.text_encoder_2 = text_encoder_2  # T5EncoderModel / MT5EncoderModel
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        self.max_tokens = max_tokens

    def repeated_blocks(self) -> list[nn.Module]:
        return [*self.text_encoder.encoder.layer, *self.text_encoder_2.encoder.block]

    @property
    def hidden_size(self) -> int:
        return self.text_encoder.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.text_encoder.embeddings.word_embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return execution_device(self.text_encoder)

    def _length(self, tokenizer) -> int:
        return min(getattr(tokenizer, "model_max_length", None) or self.max_tokens, self.max_tokens)

    def tokenize(self, prompts: list[str]) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
        """((Bert ids, mask), (T5 ids, mask)), each [B, min(model_max_length, 256)], as the inference pipeline
        tokenizes (special tokens added; V5 training left them out, reference 4.2)."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts = {prompts!r}: expected a list of strings.")
        out = []
        for tokenizer in (self.tokenizer, self.tokenizer_2):
            batch = tokenizer(list(prompts), padding="max_length", max_length=self._length(tokenizer),
                              truncation=True, return_attention_mask=True, return_tensors="pt")
            out.append((batch["input_ids"], batch["attention_mask"]))
        return out[0], out[1]

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> PromptEmbeddings:
        (ids, mask), (ids_t5, _) = self.tokenize(list(prompts))
        device = self.device
        states = self.text_encoder(input_ids=ids.to(device)).last_hidden_state  # [B, L, hidden]; no mask (V5)
        states_t5 = self.text_encoder_2(input_ids=ids_t5.to(execution_device(self.text_encoder_2))
                                        ).last_hidden_state  # [B, L5, d_model]
        return PromptEmbeddings(states=states, mask=mask.to(device), states_t5=states_t5)


def _build(folder: Path, dtype: torch.dtype, second: bool) -> nn.Module:
    """Bert (``second`` false) or the mT5 encoder on the meta device; config errors name the file."""
    from transformers import AutoConfig, BertModel, MT5EncoderModel, T5EncoderModel

    what = "T5/mT5 encoder" if second else "Bert"
    try:
        config = AutoConfig.from_pretrained(str(folder))
        with torch.device("meta"):
            if second:
                model_class = MT5EncoderModel if config.model_type == "mt5" else T5EncoderModel
                model = model_class(config)
            else:
                model = BertModel(config, add_pooling_layer=False)  # V5 takes last_hidden_state only
        return model.to(dtype)
    except Exception as exc:  # transformers raises many kinds (validation, OSError, KeyError): retell with the path
        raise config_error(folder, exc, what, "Download that folder again from the EasyAnimate V5 release.") from exc


def _components(path: str | Path) -> tuple[Path, Path, Path]:
    """(model root, text_encoder/, text_encoder_2/)."""
    root = model_root(path, "text_encoder")
    return root, resolve_component(path, "text_encoder"), root / "text_encoder_2"


def check_v5_text_encoders(path: str | Path, config: TransformerConfig | None = None) -> None:
    """Build both encoders on the meta device (no weight is read); with the transformer's ``config``, their
    widths are checked against its ``text_embed_dim`` (Bert) and ``text_embed_dim_t5`` (mT5)."""
    _, first, second = _components(path)
    bert, t5 = _build(first, torch.float32, second=False), _build(second, torch.float32, second=True)
    if config is None:
        return
    for folder, got, field, want in ((first, bert.config.hidden_size, "text_embed_dim", config.text_embed_dim),
                                     (second, t5.config.d_model, "text_embed_dim_t5", config.text_embed_dim_t5)):
        if got != want:
            raise ModelFormatError(
                f"{folder / 'config.json'} gives {got}-wide states but the transformer's {field} is {want}: the "
                f"text encoder and the transformer come from different models. Download the complete V5 folder.")


def _entries(model: nn.Module, folder: Path, prefixes: tuple[str, ...]) -> tuple[dict, list[list[str]]]:
    """(model key -> file entry for every tensor ``model`` needs, from ``folder``'s safetensors files; the names
    of each tied weight). A tied weight (T5's ``encoder.embed_tokens`` = ``shared``) is read once, found in the
    file under any of its names."""
    files = weight_files(folder)
    in_file = {}
    for entry in (e for f in files for e in read_header(f)):
        for prefix in prefixes:
            if entry.name.startswith(prefix):
                in_file.setdefault(entry.name[len(prefix):], entry)
    aliases: dict[int, list[str]] = {}
    for name, tensor in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(tensor), []).append(name)
    persistent = set(model.state_dict())
    wanted = {names[0]: names for names in aliases.values()}
    wanted.update({name: [name] for name, _ in model.named_buffers() if name in persistent})
    shapes = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}
    entries, missing = {}, []
    for key, names in wanted.items():
        entry = next((in_file[n] for n in names if n in in_file), None)
        if entry is None:
            missing.append(key)
            continue
        shape = shapes[key]
        if entry.shape != shape:
            raise ModelFormatError(f"{entry.file}: tensor '{entry.name}' has shape {entry.shape}, the config asks "
                                   f"for {shape}. Download the folder again.")
        entries[key] = entry
    if missing:
        raise ModelFormatError(f"The weights in {folder} lack {len(missing)} tensors of the encoder (first: "
                               f"{missing[:5]}). Download that folder again.")
    return entries, [names for names in aliases.values() if len(names) > 1]


def _retie(model: nn.Module, tied: list[list[str]]) -> None:
    """Every other name of a tied weight points at the tensor loaded under its first name again (loading replaced
    the meta tensor under that name only)."""
    for first, *others in tied:
        loaded = model.get_parameter(first)
        for name in others:
            owner_name, _, attr = name.rpartition(".")
            model.get_submodule(owner_name)._parameters[attr] = loaded


def _restore_position_buffers(bert: nn.Module, device) -> None:
    """Bert's non-persistent index buffers, never in a file: rebuilt as its constructor makes them."""
    embeddings = bert.embeddings
    length = bert.config.max_position_embeddings
    embeddings.register_buffer("position_ids", torch.arange(length, device=device).expand(1, -1), persistent=False)
    embeddings.register_buffer("token_type_ids", torch.zeros(1, length, dtype=torch.long, device=device),
                               persistent=False)


def _load_one(folder: Path, dtype, device, fp8, second: bool) -> nn.Module:
    model = _build(folder, dtype, second)
    adopt_linears(model)  # our Linear computes in its input's dtype, so its weight may be stored in fp8
    entries, tied = _entries(model, folder, ("",) if second else _BERT_PREFIXES)
    if fp8 == "fp8_cast":
        store_weights_in(model, torch.float8_e4m3fn, HIGH_PRECISION)  # still on meta: a build choice
    read_into(model, entries, dtype=dtype, device=device, fp8=fp8, keep=HIGH_PRECISION)
    _retie(model, tied)
    if not second:
        _restore_position_buffers(model, device)
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise ModelFormatError(f"{folder}: {len(left)} tensors of the encoder were not loaded (first: {left[:5]}). "
                               f"Download that folder again.")
    return model.eval().requires_grad_(False)


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    if not folder.is_dir():
        raise FileNotFoundError(f"No tokenizer folder at {folder}: an EasyAnimate V5 folder needs tokenizer/ and "
                                f"tokenizer_2/ beside its text encoders.")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, ImportError) as exc:
        raise ModelFormatError(f"Cannot read the tokenizer in {folder} ({exc}). Download that folder of the model "
                               f"again.") from exc


def load_v5_text_encoder(path: str | Path, *, dtype: torch.dtype = torch.bfloat16,
                         device: torch.device | str = "cpu", fp8: str | None = None) -> V5TextEncoder:
    """Load the Bert and mT5 encoders and both tokenizers of an EasyAnimate V5 model folder.

    ``fp8`` ("qfloat8" or "fp8_cast", see :mod:`.memory`) stores their linear weights in fp8, each layer converted
    as soon as it is read; the memory modes place the result like the Qwen2-VL encoder (``repeated_blocks``: the
    Bert layers, then the mT5 blocks)."""
    check_fp8_kind(fp8)
    root, first, second = _components(path)
    bert = _load_one(first, dtype, device, fp8, second=False)
    t5 = _load_one(second, dtype, device, fp8, second=True)
    logger.info("Loaded the EasyAnimate V5 text encoders (Bert %d-wide, mT5 %d-wide) from %s as %s%s on %s",
                bert.config.hidden_size, t5.config.d_model, root, dtype, f" with {fp8} linears" if fp8 else "",
                device)
    return V5TextEncoder(bert, _load_tokenizer(root / "tokenizer"), t5, _load_tokenizer(root / "tokenizer_2"))
