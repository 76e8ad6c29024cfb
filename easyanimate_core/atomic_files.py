"""Files written whole or not at all: a temporary name in the same folder, a check, then a rename.

Every file the pack writes (videos, images, LoRAs, checkpoints, reports, training caches) goes through
:func:`write_file`: the content goes to ``<name>.<pid>.partial`` beside the final path, is checked (the writer's
own status, then a read-back of what matters: a video's frame count, an image's size, a safetensors file's tensor
names, a text's bytes) and is renamed into place with ``os.replace``, which never shows a half-written file under
the final name. A failure raises :class:`OSError` naming the final path and the reason, and removes the temporary
file. A killed process leaves only a ``.partial`` name; :func:`remove_stale` deletes it at the start of the next run
that writes to that folder, but never the temporary file of a process that is still writing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

PARTIAL = ".partial"
_OWNED = re.compile(r"^.+\.(\d+)" + re.escape(PARTIAL) + "$")


def partial_path(final: str | Path, *, shared: bool = False) -> Path:
    """The temporary name of ``final``: ``<name>.<pid>.partial``, or ``<name>.partial`` for an entry that several
    processes write together (a training checkpoint of every rank), which only its owner's start may clean."""
    final = Path(final)
    return final.with_name(f"{final.name}{PARTIAL}" if shared else f"{final.name}.{os.getpid()}{PARTIAL}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror  # "File too large", "No space left on device": without the temporary name
    return str(exc) or type(exc).__name__


def write_file(final: str | Path, write: Callable[[Path], None], check: Callable[[Path], None] | None = None
               ) -> Path:
    """Run ``write(tmp)``, then ``check(tmp)`` (raises when what was written is not what was meant), then rename
    ``tmp`` to ``final``. Returns ``final``; any failure raises OSError naming ``final`` and leaves nothing there
    but what was there before."""
    final = Path(final)
    tmp = partial_path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        if not tmp.is_file():
            raise OSError("the writer created no file")
        if check is not None:
            check(tmp)
        os.replace(tmp, final)
    except Exception as exc:
        raise OSError(f"Cannot write {final}: {_reason(exc)}. Nothing was written there: check the free space and "
                      f"the write permission of {final.parent} (or choose another output folder), then run "
                      f"again.") from exc
    finally:
        with contextlib.suppress(OSError):  # e.g. the folder could not be made: there is nothing to remove
            tmp.unlink(missing_ok=True)
    return final


def write_bytes(final: str | Path, data: bytes) -> Path:
    """``data`` to ``final``, read back and compared before the rename."""

    def check(tmp: Path) -> None:
        if tmp.read_bytes() != data:
            raise OSError(f"the file reads back as {tmp.stat().st_size} bytes that differ from the {len(data)} "
                          f"written")

    return write_file(final, lambda tmp: tmp.write_bytes(data), check)


def write_text(final: str | Path, text: str) -> Path:
    return write_bytes(final, text.encode("utf-8"))


def replace_folder(tmp: Path, final: Path) -> None:
    """Put the finished folder ``tmp`` at ``final``; a folder already there (the same checkpoint saved again after a
    resume) is moved aside first, so ``final`` always holds one whole version."""
    old = None
    if final.exists():
        old = partial_path(final.with_name(final.name + ".old"), shared=True)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    import psutil  # accelerate's dependency; portable where os.kill(pid, 0) is not (it terminates on Windows)

    return psutil.pid_exists(pid)


def remove_stale(folder: str | Path, *, shared: bool = False) -> list[Path]:
    """Delete the ``<name>.<pid>.partial`` entries in ``folder`` whose process has ended (a killed write); with
    ``shared`` also every other ``*.partial`` entry (call it only from the one process that owns the folder, before
    others write to it). Returns what was removed."""
    folder = Path(folder)
    removed = []
    try:
        entries = [p for p in folder.iterdir() if p.name.endswith(PARTIAL)]
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for path in entries:
        owner = _OWNED.match(path.name)
        if owner is None and not shared or owner is not None and _running(int(owner.group(1))):
            continue
        logger.info("Removing %s, left half-written by an interrupted run", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
