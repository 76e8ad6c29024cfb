"""Shared test setup: the repository root loaded as a package under a fixed alias.

ComfyUI imports the pack folder as a package named after the folder, so the pack only uses relative imports.
Tests do the same under the alias ``easyanimate_pack``: node tests write ``from easyanimate_pack.nodes import ...``.
Core tests import ``easyanimate_core`` directly (the repository root is on ``sys.path`` through pytest's
``pythonpath`` setting). Nothing heavy happens here.
"""

import importlib.util
import sys
from pathlib import Path

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
