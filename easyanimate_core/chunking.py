"""Per-token inference work done a chunk of tokens at a time, so its temporaries are one chunk's.

A video of 49 frames at 576x1008 is 29,484 tokens per sample; one [2, N, 3072] bf16 activation is then 0.36 GB and
the feed-forward's [2, N, 12288] hidden state 1.45 GB. Norms, modulation, the rotary embedding, the feed-forward and
the gated residuals treat every token on its own, so splitting the token axis changes no value (each chunk runs the
same per-token arithmetic) and bounds their temporaries. Autograd keeps what each chunk saves anyway, so training
runs whole tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

TOKEN_CHUNK = 2048  # tokens per chunk and sample: [2 x 2048, 3072] x [3072, 12288] GEMMs still fill a GPU
_whole_depth = 0  # > 0 inside whole_tensors()


@contextmanager
def whole_tensors() -> Iterator[None]:
    """No chunking inside the block: for sequential CPU offload, whose hooks copy a layer's weights to the device at
    every call, so chunks would copy them once per chunk."""
    global _whole_depth
    _whole_depth += 1
    try:
        yield
    finally:
        _whole_depth -= 1


def chunked() -> bool:
    """Whether per-token work runs in chunks now: without autograd, outside :func:`whole_tensors`."""
    return not torch.is_grad_enabled() and _whole_depth == 0


def per_token(fn: Callable[..., torch.Tensor], *xs: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``fn(*xs)`` for an ``fn`` that works on each token (dim 1 of ``[B, N, ...]``) on its own, written into ``out``
    when given.

    When :func:`chunked` and for more than ``TOKEN_CHUNK`` tokens, ``fn`` runs on chunks of the token axis and writes
    into one output: the peak is the inputs, the output and one chunk's temporaries."""
    n = xs[0].shape[1]
    if not chunked() or n <= TOKEN_CHUNK:
        if out is None:
            return fn(*xs)
        out.copy_(fn(*xs))
        return out
    for start in range(0, n, TOKEN_CHUNK):
        part = fn(*(x[:, start:start + TOKEN_CHUNK] for x in xs))
        if out is None:
            out = part.new_empty((part.shape[0], n, *part.shape[2:]))
        out[:, start:start + TOKEN_CHUNK] = part
        del part
    return out
