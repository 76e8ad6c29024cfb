"""Regional compilation: ``torch.compile`` on each repeated block, not on the whole model.

The blocks share one forward, so Dynamo compiles it once per block kind (MMDiT blocks, and the 7B's shared-weight
blocks) and every block reuses the graph with its own weights as inputs; compiling takes a block's time, not the
model's. Shapes are static per video size: a new size compiles again, a new prompt, seed or guidance does not.
:func:`compiled_blocks` swaps the compiled wrappers in for the duration of a block and puts the plain blocks back
in a ``finally``, so the model's state-dict keys and an interrupted run are unaffected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

logger = logging.getLogger(__name__)


def compile_block(block: nn.Module, backend: str = "inductor", mode: str | None = None) -> nn.Module:
    return torch.compile(block, backend=backend, mode=mode, dynamic=False)


@contextmanager
def compiled_blocks(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> Iterator[nn.Module]:
    """``model`` with each of its repeated blocks (``model.REPEATED_BLOCKS``, a ModuleList) compiled."""
    container = getattr(model, model.REPEATED_BLOCKS)
    originals = list(container)
    logger.info("torch.compile (%s): the transformer blocks compile during the first step, which takes longer "
                "(once per block kind and video size).", backend)
    try:
        for index, block in enumerate(originals):
            container[index] = compile_block(block, backend, mode)
        yield model
    finally:
        for index, block in enumerate(originals):
            container[index] = block
