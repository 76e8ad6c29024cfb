"""fp8 storage applied while loading: the same model as converting after the load, one block in bf16 at a time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from easyanimate_core import loading
from easyanimate_core.demo import write_demo_model
from easyanimate_core.loading import load_transformer
from easyanimate_core.memory import fp8_targets, store_in_fp8
from easyanimate_core.text_encoder import QwenTextEncoder, load_text_encoder

KINDS = ["qfloat8", "fp8_cast"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_model(tmp_path_factory.mktemp("fp8") / "m", variant="inp")


def _stored(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every stored tensor by name, quanto's fp8 weights split into payload and scale."""
    out = {}
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if hasattr(tensor, "__tensor_flatten__"):
            for part in tensor.__tensor_flatten__()[0]:
                out[f"{name}.{part}"] = getattr(tensor, part)
        else:
            out[name] = tensor
    return out


def _converted(model: nn.Module) -> list[str]:
    """The Linears stored in fp8: quanto's QLinear, or an fp8 weight (fp8_cast)."""
    return sorted(n for n, m in model.named_modules() if type(m).__name__ == "QLinear"
                  or (isinstance(m, nn.Linear) and m.weight.dtype == torch.float8_e4m3fn))


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


def _assert_same_storage(streamed: nn.Module, after: nn.Module) -> None:
    assert _converted(streamed) == _converted(after) and _converted(after)
    a, b = _stored(streamed), _stored(after)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(_bits(a[name]), _bits(b[name])), name
    assert not any(t.is_meta for t in a.values())


@pytest.mark.parametrize("kind", KINDS)
def test_transformer_converted_while_loading_equals_converting_after(demo, kind):
    streamed = load_transformer(demo, dtype=torch.bfloat16, fp8=kind)
    after = store_in_fp8(load_transformer(demo, dtype=torch.bfloat16), kind)
    _assert_same_storage(streamed, after)
    assert "transformer_blocks.0.attn1.to_q" in _converted(streamed) and "proj_out" not in _converted(streamed)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(1, 16, 2, 8, 12, generator=gen, dtype=torch.bfloat16), torch.tensor([500.0]),
         torch.randn(1, 7, streamed.config.text_embed_dim, generator=gen, dtype=torch.bfloat16))
    inpaint = torch.randn(1, 17, 2, 8, 12, generator=gen, dtype=torch.bfloat16)
    assert torch.equal(streamed(*x, inpaint_latents=inpaint), after(*x, inpaint_latents=inpaint))


@pytest.mark.parametrize("kind", KINDS)
def test_text_encoder_converted_while_loading_equals_converting_after(demo, kind):
    streamed = load_text_encoder(demo, dtype=torch.bfloat16, fp8=kind)
    after = load_text_encoder(demo, dtype=torch.bfloat16)
    store_in_fp8(after.language_model, kind, QwenTextEncoder.HIGH_PRECISION)
    _assert_same_storage(streamed.language_model, after.language_model)
    assert torch.equal(streamed.encode(["a red fox"]).states, after.encode(["a red fox"]).states)


@pytest.mark.parametrize("kind", KINDS)
def test_at_most_one_block_is_held_in_the_load_dtype(demo, monkeypatch, kind):
    # Before each group of tensors is read, every block read so far must already be in fp8: the host never holds
    # more than one block of plain bf16 linear weights on top of the fp8 model.
    model_holder: dict[str, nn.Module] = {}
    reads: list[list[str]] = []
    real_read_into, real_read_tensors = loading.read_into, loading.read_tensors

    def spy_read_into(model, *args, **kwargs):
        model_holder["model"] = model
        return real_read_into(model, *args, **kwargs)

    def spy_read_tensors(entries, **kwargs):
        model = model_holder["model"]
        reads.append([n for n in fp8_targets(model, model.HIGH_PRECISION) if not model.get_submodule(n).weight.is_meta])
        return real_read_tensors(entries, **kwargs)

    monkeypatch.setattr(loading, "read_into", spy_read_into)
    monkeypatch.setattr(loading, "read_tensors", spy_read_tensors)
    model = load_transformer(demo, dtype=torch.bfloat16, fp8=kind)
    blocks = len(model.transformer_blocks)
    assert len(reads) >= blocks + 1  # one read per numbered block (text_proj.1 is one too), then the rest
    assert reads == [[]] * len(reads)  # no plain (unconverted) linear weight loaded before any read


def test_unknown_fp8_kind_is_refused_before_anything_is_read(demo, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("a weight was read before the fp8 kind was checked")

    monkeypatch.setattr(loading, "read_tensors", no_reading)
    with pytest.raises(ValueError, match="fp8 kind 'int4'"):
        load_transformer(demo, fp8="int4")
    with pytest.raises(ValueError, match="fp8 kind 'int4'"):
        load_text_encoder(demo, fp8="int4")
