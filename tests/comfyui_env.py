"""The real ComfyUI for the node tests: the snapshot ``tools/setup_comfyui.sh`` puts in ``.comfyui/ComfyUI`` (or
``$COMFYUI_DIR``), imported as ComfyUI's own tests do on a CPU machine (``args.cpu`` before the first
``comfy.model_management`` import). No fakes: the nodes meet the real ``comfy``, ``folder_paths`` and ``nodes``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def comfyui_dir() -> Path:
    return Path(os.environ.get("COMFYUI_DIR") or REPO_ROOT / ".comfyui" / "ComfyUI")


def import_comfyui(**flags) -> None:
    """Put ComfyUI first on ``sys.path`` (its ``nodes.py`` shadows our ``nodes/`` package as it does in ComfyUI)
    and import it with its command-line ``flags`` (default: ``cpu=True``, as every test runs); an error says how to
    set it up."""
    if "comfy.model_management" in sys.modules:
        return
    folder = comfyui_dir()
    if not (folder / "comfy" / "model_management.py").is_file():
        raise RuntimeError(f"No ComfyUI at {folder}: run `bash tools/setup_comfyui.sh` (it fetches ComfyUI a125cd8 "
                           f"and installs its requirements) or point COMFYUI_DIR at a ComfyUI checkout.")
    sys.path.insert(0, str(folder))
    import comfy.cli_args

    for name, value in (flags or {"cpu": True}).items():
        setattr(comfy.cli_args.args, name, value)
    import comfy.model_management  # noqa: F401
    import nodes

    if not Path(nodes.__file__).resolve().is_relative_to(folder.resolve()):
        raise RuntimeError(f"`import nodes` found {nodes.__file__}, not ComfyUI's nodes.py")


def use_folders(monkeypatch, tmp_path: Path, models_dir: Path) -> Path:
    """Point ComfyUI's folders at a test's own: models/EasyAnimate = ``models_dir``, the input folder =
    ``tmp_path`` (so files a test writes there are inputs a node may read), loras, output and temp under it.
    Returns the loras folder."""
    import folder_paths

    loras = tmp_path / "loras"
    loras.mkdir(exist_ok=True)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "EasyAnimate", ([str(models_dir)], set()))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(loras)], {".safetensors"}))
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path))
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "temp_directory", str(tmp_path / "temp"))
    monkeypatch.delenv("EASYANIMATE_MODELS_DIR", raising=False)
    return loras
