"""Training checkpoints under ``<output>/checkpoints/checkpoint-<step>``, written atomically.

A checkpoint is first written to ``checkpoint-<step>.partial`` (every process writes its part there) and renamed
when complete (``atomic_files``, the pack's one mechanism for whole-or-nothing files), so a killed run leaves either
a whole checkpoint or none; leftovers of a killed write are removed when the next run starts. It holds the
accelerate state (optimizer, learning-rate schedule, grad scaler, random number generators of every process), the
LoRA weights in full precision (``lora.safetensors``, the official format: a checkpoint is also a usable LoRA) and
``trainer_state.json`` (the step and the options that shape the loss curve, checked on resume).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import atomic_files

FOLDER = "checkpoints"
_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
LORA_FILE = "lora.safetensors"
VALIDATION_FOLDER = "validation"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path

    @property
    def lora(self) -> Path:
        return self.path / LORA_FILE

    def state(self) -> dict:
        path = self.path / STATE_FILE
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is unreadable ({exc}); delete {self.path} to resume from the checkpoint "
                             f"before it.") from exc


def checkpoint_root(output: Path) -> Path:
    return output / FOLDER


def checkpoint_path(output: Path, step: int) -> Path:
    return checkpoint_root(output) / f"checkpoint-{step:06d}"


def partial_path(final: Path) -> Path:
    return atomic_files.partial_path(final, shared=True)


def complete_checkpoints(output: Path) -> list[Checkpoint]:
    """Finished checkpoints, oldest first (partial folders of a killed write are ignored)."""
    root = checkpoint_root(output)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append(Checkpoint(int(match.group(1)), path))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(output: Path) -> Checkpoint | None:
    found = complete_checkpoints(output)
    return found[-1] if found else None


def remove_partials(output: Path) -> None:
    """Delete what a killed run left half-written: checkpoint folders (called by the main process before the others
    write), and the LoRA, reports and validation videos of ended processes (the output folder may be any folder the
    user chose: other ``*.partial`` files there are not ours)."""
    atomic_files.remove_stale(checkpoint_root(output), shared=True)
    for root in (output, output / VALIDATION_FOLDER):
        atomic_files.remove_stale(root)


def begin(final: Path) -> Path:
    """A fresh temporary folder for the checkpoint that will live at ``final``."""
    tmp = partial_path(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(final: Path, state: dict) -> Checkpoint:
    """Write the state file into the temporary folder, check that the LoRA is there, and rename the folder to
    ``final`` (the atomic step)."""
    tmp = partial_path(final)
    if not (tmp / LORA_FILE).is_file():
        raise OSError(f"Cannot write the checkpoint {final}: its {LORA_FILE} is missing from {tmp}.")
    atomic_files.write_text(tmp / STATE_FILE, json.dumps(state, indent=2))
    atomic_files.replace_folder(tmp, final)
    return Checkpoint(state["step"], final)


def abort(final: Path) -> None:
    shutil.rmtree(partial_path(final), ignore_errors=True)


def prune(output: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (0 keeps all)."""
    if keep <= 0:
        return
    for old in complete_checkpoints(output)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
