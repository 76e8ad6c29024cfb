"""Stand-ins for the ComfyUI modules nodes/_comfy.py imports (comfy.utils, comfy.model_management, folder_paths),
installed into sys.modules for one test; the callbacks let each test record what the nodes do with them."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import torch


class Interrupted(Exception):
    """What the fake ``throw_exception_if_processing_interrupted`` raises (ComfyUI's own is not importable here)."""


def install_fake_comfy(monkeypatch, *, on_progress: Callable[[int, int | None, bool], None],
                       on_check: Callable[[], None], freed: list[int], **folder_paths) -> None:
    """``on_progress(value, total, has_preview)`` for each progress update, ``on_check()`` at each interrupt check,
    the sizes asked of ``free_memory`` appended to ``freed``; ``folder_paths`` are the attributes of the fake
    ``folder_paths`` module."""
    comfy, utils, mm = (types.ModuleType(n) for n in ("comfy", "comfy.utils", "comfy.model_management"))

    class ProgressBar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            on_progress(value, total, preview is not None)

    utils.ProgressBar = ProgressBar
    mm.throw_exception_if_processing_interrupted = on_check
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.free_memory = lambda size, device, keep_loaded=(): freed.append(size)
    comfy.utils, comfy.model_management = utils, mm
    paths_module = types.ModuleType("folder_paths")
    for name, value in folder_paths.items():
        setattr(paths_module, name, value)
    for name, module in (("comfy", comfy), ("comfy.utils", utils), ("comfy.model_management", mm),
                         ("folder_paths", paths_module)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delenv("EASYANIMATE_MODELS_DIR", raising=False)
