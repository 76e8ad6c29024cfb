"""The only module that talks to ComfyUI. Every function imports ComfyUI inside and falls back to plain torch,
so the nodes run the same in tests and on the command line as inside ComfyUI."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

MODEL_FOLDER = "EasyAnimate"
PREVIEW_SIZE = 512


def register_model_folder() -> None:
    """Add ``models/EasyAnimate`` to ComfyUI's folder list without replacing paths from extra_model_paths.yaml."""
    try:
        import folder_paths
    except ImportError:
        return
    folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def model_roots() -> list[Path]:
    """Every folder that may hold EasyAnimate model folders."""
    roots = []
    try:
        import folder_paths

        roots += [Path(p) for p in folder_paths.get_folder_paths(MODEL_FOLDER)]
    except (ImportError, KeyError):
        pass
    if os.environ.get("EASYANIMATE_MODELS_DIR"):
        roots.append(Path(os.environ["EASYANIMATE_MODELS_DIR"]))
    return roots


def model_folders() -> dict[str, Path]:
    """Model folder name -> path, for every folder with a ``transformer/config.json`` under any root."""
    found: dict[str, Path] = {}
    for root in model_roots():
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if (folder / "transformer" / "config.json").is_file():
                found.setdefault(folder.name, folder)
    return found


def readable_roots() -> list[Path]:
    """The folders a path typed into a node may point into: ComfyUI's input and output folders and every model
    folder it knows (``extra_model_paths.yaml`` entries included; not ``custom_nodes``). Empty outside ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        return []
    roots = [folder_paths.get_input_directory(), folder_paths.get_output_directory(), folder_paths.models_dir]
    roots += [path for name, (paths, _) in folder_paths.folder_names_and_paths.items() if name != "custom_nodes"
              for path in paths]
    unique: dict[Path, None] = {}
    for root in roots:
        unique.setdefault(Path(root).expanduser().resolve(), None)
    return list(unique)


def user_path(value: str, what: str) -> Path:
    """A file or folder path typed into a node (``what`` names the input), resolved: a relative path is taken in
    ComfyUI's input folder, and the result (links followed) must lie inside :func:`readable_roots`, so a workflow
    cannot make the server read or write anywhere else. Outside ComfyUI, any path."""
    text = value.strip()
    if not text:
        raise ValueError(f"{what}: the path is empty; give the path of a file in ComfyUI's input folder (or a "
                         f"models or output folder).")
    path = Path(text).expanduser()
    roots = readable_roots()
    if not roots:
        return path.resolve()
    import folder_paths

    if not path.is_absolute():
        path = Path(folder_paths.get_input_directory()) / path
    path = path.resolve()
    if not any(path.is_relative_to(root) for root in roots):
        raise ValueError(f"{what} = {text!r} is {path}, outside ComfyUI's input, output and model folders: move it "
                         f"into {folder_paths.get_input_directory()} (a relative path is read there) or into a "
                         f"model folder, or add its folder to extra_model_paths.yaml.")
    return path


def output_directory() -> Path:
    """ComfyUI's output folder (``--output-directory`` honoured), or the working directory outside ComfyUI."""
    try:
        import folder_paths

        return Path(folder_paths.get_output_directory())
    except ImportError:
        return Path.cwd()


def lora_names() -> list[str]:
    try:
        import folder_paths

        return folder_paths.get_filename_list("loras")
    except (ImportError, KeyError):
        return []


def lora_path(name: str) -> Path:
    try:
        import folder_paths

        path = folder_paths.get_full_path("loras", name)
        if path:
            return Path(path)
    except ImportError:
        pass
    return Path(name)


def save_ui_image(image, prefix: str) -> list[dict]:
    """Save one IMAGE frame ``[H, W, C]`` (0..1) as a PNG in ComfyUI's temp folder for the front end.

    Returns ComfyUI's UI image references ``[{"filename", "subfolder", "type": "temp"}]``; ``[]`` outside ComfyUI,
    where there is no front end to show it.
    """
    try:
        import folder_paths
        from PIL import Image
    except ImportError:
        return []
    folder = Path(folder_paths.get_temp_directory())
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}.png"
    pixels = (image[..., :3].detach().float().clamp(0, 1) * 255).round().byte().cpu().numpy()  # [H, W, 3 or 1]
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    Image.fromarray(pixels).save(folder / name, compress_level=1)
    return [{"filename": name, "subfolder": "", "type": "temp"}]


def show_ui(node_id: str | None, ui: dict) -> None:
    """Send a node's UI output to the front end now, as ComfyUI does when a node returns one; for a node that is
    about to raise. Nothing outside ComfyUI or without the node's ``UNIQUE_ID``."""
    if node_id is None:
        return
    try:
        from server import PromptServer
    except ImportError:
        return
    server = PromptServer.instance
    server.send_sync("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": None},
                     server.client_id)


def make_room(bytes_needed: int) -> None:
    """Free VRAM held by other ComfyUI models (never all of them) before one of ours moves in."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.free_memory(bytes_needed, mm.get_torch_device())


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel; nothing outside ComfyUI."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.throw_exception_if_processing_interrupted()


@contextmanager
def cancel_points(blocks) -> Iterator[None]:
    """Cancel checked before every one of ``blocks`` (a model's ``repeated_blocks()``, the VAE's
    ``residual_blocks()``), not only between steps: under sequential offload or block swap one step or one VAE
    chunk can take minutes. The hooks go when the block ends; compiled blocks run them outside their graphs."""
    import torch  # not at pack load: ComfyUI imports the pack before it needs torch

    hook = torch.compiler.disable(lambda block, args: check_interrupt())
    handles = [block.register_forward_pre_hook(hook) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Progress:
    """ComfyUI's progress bar (with a latent preview image per step), or nothing outside ComfyUI."""

    def __init__(self, total: int):
        try:
            import comfy.utils

            self._bar = comfy.utils.ProgressBar(total)
        except ImportError:
            self._bar = None

    @classmethod
    def reporter(cls):
        """A ``callback(done, total)`` for work whose total is known only when it starts (a VAE call): a bar per
        call, advanced per chunk, with ComfyUI's Cancel checked at each."""
        bar, bar_total = None, None

        def report(done: int, total: int) -> None:
            nonlocal bar, bar_total
            if done == 1 or total != bar_total:  # a new call (another encode, a retry with smaller tiles)
                bar, bar_total = cls(total), total
            bar.update(done, total)
            check_interrupt()

        return report

    def update(self, done: int, total: int, latents=None) -> None:
        if self._bar is None:
            return
        preview = _preview(latents) if latents is not None else None
        self._bar.update_absolute(done, total, preview)


def _preview(latents):
    """A rough RGB view of the first latent frame (three channels, min-max scaled) as ComfyUI's preview tuple."""
    try:
        from PIL import Image
    except ImportError:
        return None
    frame = latents[0, :3, 0].float()  # [3, h, w]
    lo, hi = frame.amin(dim=(1, 2), keepdim=True), frame.amax(dim=(1, 2), keepdim=True)
    frame = ((frame - lo) / (hi - lo + 1e-6) * 255).byte().permute(1, 2, 0).cpu().numpy()
    return "JPEG", Image.fromarray(frame), PREVIEW_SIZE
