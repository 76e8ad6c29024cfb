"""Shared test setup: the repository root loaded as a package under a fixed alias.

ComfyUI imports the pack folder as a package named after the folder, so the pack only uses relative imports.
Tests do the same under the alias ``easyanimate_pack``: node tests write ``from easyanimate_pack.nodes import ...``.
Core tests import ``easyanimate_core`` directly (the repository root is on ``sys.path`` through pytest's
``pythonpath`` setting). Nothing heavy happens here.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_ALIAS = "easyanimate_pack"


def load_pack(name: str = PACK_ALIAS, root: Path = REPO_ROOT):
    """Import the pack folder ``root`` as the package ``name`` (as ComfyUI does) and return the module."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py", submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


load_pack()


@pytest.fixture()
def models_dir(tmp_path):
    """The models/EasyAnimate folder the ``comfyui`` fixture shows ComfyUI; test modules with models override it."""
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture()
def comfyui(monkeypatch, tmp_path, models_dir):
    """The real ComfyUI (tests/comfyui_env.py) with its folders pointed at this test's, recording what the nodes do:
    ``progress`` (value, total, has preview) of every progress-bar update and ``freed`` (bytes asked of
    ``free_memory``). Setting ``interrupt_after`` makes ComfyUI's Cancel fire once a progress update reaches that
    value. Every model is unloaded afterwards, as ComfyUI's "Unload models" does."""
    from comfyui_env import import_comfyui, use_folders

    import_comfyui()
    import comfy.model_management as mm
    import comfy.utils

    record = {"progress": [], "freed": [], "interrupt_after": None}
    record["loras"] = use_folders(monkeypatch, tmp_path, models_dir)

    def hook(value, total, preview, node_id=None):
        record["progress"].append((value, total, preview is not None))
        if record["interrupt_after"] is not None and value >= record["interrupt_after"]:
            mm.interrupt_current_processing(True)

    real_free_memory = mm.free_memory

    def free_memory(memory_required, device, keep_loaded=()):
        record["freed"].append(memory_required)
        return real_free_memory(memory_required, device, keep_loaded)

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", hook)
    monkeypatch.setattr(mm, "free_memory", free_memory)
    yield record
    mm.interrupt_current_processing(False)
    mm.unload_all_models()
