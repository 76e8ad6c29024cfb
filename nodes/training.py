"""LoRA training from the graph: a dataset node, a training node and a loader for the trained file.

The training node runs the core's ``train-lora`` command in a subprocess (with ComfyUI's Python), so an
out-of-memory error or a crash never takes ComfyUI down. It streams the trainer's output to the log, turns its
per-step lines into the progress bar, stops it on Cancel (SIGTERM, which ends the run at the next step boundary;
a kill after a timeout) and outputs the path of the trained LoRA for EasyAnimate LoRA Loader (Path).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from . import _comfy
from ._types import CATEGORY

logger = logging.getLogger(__name__)

DATASET = "EASYANIMATE_DATASET"
PACK_ROOT = Path(__file__).resolve().parents[1]  # holds easyanimate_core/
# ``python -m easyanimate_core`` would need the pack folder on sys.path, which embedded Pythons (the Windows
# portable ComfyUI: a ._pth file) take from neither PYTHONPATH nor the working directory: put it there explicitly.
_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from easyanimate_core.__main__ import main; "
              "sys.exit(main())")
STEP_LINE = re.compile(r"^step (\d+)/(\d+) loss=(\S+)")
LORA_LINE = re.compile(r"^lora=(.+)$")
STOP_TIMEOUT_S = 60.0  # after SIGTERM the trainer finishes its step; then it is killed
_EOF = object()


@dataclass(frozen=True)
class TrainingDataset:
    """A checked dataset: a metadata JSON or a folder, and how its entries resolve."""

    data: str
    data_root: str
    default_caption: str
    summary: str


class EasyAnimateTrainingDataset:
    DESCRIPTION = ("A LoRA training dataset: a metadata JSON in the EasyAnimate format (a list of {file_path, text, "
                   "type image|video}) or a folder of images and videos with captions in same-named .txt files. "
                   "Every file is opened once; missing or unreadable entries are skipped and counted in the info.")
    CATEGORY = f"{CATEGORY}/training"
    FUNCTION = "load"
    RETURN_TYPES = (DATASET, "STRING")
    RETURN_NAMES = ("dataset", "info")
    OUTPUT_TOOLTIPS = ("The dataset, for EasyAnimate Train LoRA.",
                       "How many images and videos are usable, and which entries were skipped and why.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "path": ("STRING", {"default": "", "tooltip": "Absolute path of a metadata .json file or of a "
                                                              "folder of images/videos with .txt captions."}),
                "default_caption": ("STRING", {"default": "", "tooltip": "Folder datasets: the caption of files "
                                                                         "without a .txt file."}),
                "data_root": ("STRING", {"default": "", "tooltip": "Metadata JSON: the folder relative file_path "
                                                                   "values resolve against (empty: the JSON's "
                                                                   "folder)."}),
            }
        }

    def load(self, path, default_caption, data_root):
        from ..easyanimate_core.training.dataset import load_dataset

        if not path.strip():
            raise ValueError("Give the path of a dataset metadata .json file or of a folder of captioned images "
                             "and videos.")
        # Absolute paths inside ComfyUI's folders: the trainer runs in another working directory.
        data = str(_comfy.user_path(path, "path"))
        root = str(_comfy.user_path(data_root, "data_root")) if data_root.strip() else ""
        _, report = load_dataset(data, root or None, default_caption)
        return TrainingDataset(data, root, default_caption, report.summary()), report.summary()


_OPTIONS = {  # name: (declaration, CLI flag)
    "steps": (("INT", {"default": 1000, "min": 1, "max": 1_000_000, "tooltip": "Optimizer steps."}), "--steps"),
    "rank": (("INT", {"default": 128, "min": 1, "max": 1024, "tooltip": "LoRA rank (the reference uses 128)."}),
             "--rank"),
    "alpha": (("FLOAT", {"default": 64.0, "min": 0.01, "max": 4096.0, "step": 0.5,
                         "tooltip": "LoRA alpha; the LoRA is scaled by alpha / rank (the reference uses 64)."}),
              "--alpha"),
    "learning_rate": (("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1e-1, "step": 1e-6, "round": False,
                                 "tooltip": "AdamW learning rate."}), "--learning-rate"),
    "batch_size": (("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Items per step (one bucket each)."}),
                   "--batch-size"),
    "gradient_accumulation": (("INT", {"default": 1, "min": 1, "max": 128,
                                       "tooltip": "Batches summed per optimizer step."}), "--gradient-accumulation"),
    "video_size": (("INT", {"default": 256, "min": 64, "max": 2048, "step": 16,
                            "tooltip": "A clip of the full frame count trains at about this side squared; "
                                       "shorter clips and images get more pixels (same token count)."}),
                   "--video-size"),
    "image_size": (("INT", {"default": 512, "min": 64, "max": 2048, "step": 16,
                            "tooltip": "Largest side squared for images and short clips."}), "--image-size"),
    "frames": (("INT", {"default": 25, "min": 1, "max": 161, "step": 4,
                        "tooltip": "Most frames per clip, 4k+1."}), "--frames"),
    "mixed_precision": ((["bf16", "fp16", "no"], {"default": "bf16", "tooltip": "Compute dtype; bf16 is what the "
                                                                                "models were trained with."}),
                        "--mixed-precision"),
    "gradient_checkpointing": (("BOOLEAN", {"default": True, "tooltip": "Recompute blocks in the backward pass: "
                                                                        "much less memory, about 30% slower."}),
                               "--gradient-checkpointing"),
    "fp8_base": (("BOOLEAN", {"default": False, "tooltip": "Store the frozen base weights in fp8 (halves their "
                                                           "memory; needs bf16)."}), "--fp8-base"),
    "checkpoint_every": (("INT", {"default": 100, "min": 1, "max": 100_000,
                                  "tooltip": "Steps between checkpoints (a Cancel resumes from the last one)."}),
                         "--checkpoint-every"),
    "seed": (("INT", {"default": 42, "min": 0, "max": 2 ** 31 - 1, "tooltip": "Training seed."}), "--seed"),
}


# The validation videos' size and steps (the trainer's defaults: the 672x384x49 of the official scripts, 25 steps);
# optional, so workflows saved before they existed keep their widget values.
_VALIDATION_OPTIONS = {
    "validation_width": ("INT", {"default": 672, "min": 16, "max": 2048, "step": 16,
                                 "tooltip": "Width of the validation videos (multiple of 16)."}),
    "validation_height": ("INT", {"default": 384, "min": 16, "max": 2048, "step": 16,
                                  "tooltip": "Height of the validation videos (multiple of 16)."}),
    "validation_frames": ("INT", {"default": 49, "min": 1, "max": 121, "step": 4,
                                  "tooltip": "Frames of the validation videos (4k+1); fewer render faster."}),
    "validation_steps": ("INT", {"default": 25, "min": 1, "max": 100,
                                 "tooltip": "Sampling steps of each validation video."}),
}


class EasyAnimateTrainLoRA:
    DESCRIPTION = ("Trains a LoRA on the dataset in a separate process (a crash or out-of-memory cannot take "
                   "ComfyUI down), with the loss in the log and the progress bar. Cancel stops it after the current "
                   "step; queue again with resume on to continue from the last checkpoint. Outputs the LoRA path.")
    CATEGORY = f"{CATEGORY}/training"
    FUNCTION = "train"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("lora_path", "log")
    OUTPUT_TOOLTIPS = ("Path of the trained LoRA (official EasyAnimate format), for EasyAnimate LoRA Loader (Path).",
                       "The last lines of the trainer's output.")

    @classmethod
    def INPUT_TYPES(cls):
        folders = sorted(_comfy.model_folders()) or ["(no model folder in models/EasyAnimate)"]
        required = {
            "dataset": (DATASET, {"tooltip": "From EasyAnimate Training Dataset."}),
            "model": (folders, {"tooltip": "The model folder to train on: a T2V or InP model (the LoRA then loads "
                                           "on every variant of the same size)."}),
            "output_dir": ("STRING", {"default": "EasyAnimate/lora_training",
                                      "tooltip": "Folder for the runs (a relative path is inside ComfyUI's output "
                                                 "folder). Its cache/ subfolder keeps the encoded captions and "
                                                 "clips for every run on the same dataset."}),
            "name": ("STRING", {"default": "my_lora", "tooltip": "Run name: the subfolder of output_dir and the "
                                                                 "file name of the LoRA."}),
        }
        required.update({name: declaration for name, (declaration, _) in _OPTIONS.items()})
        required["resume"] = ("BOOLEAN", {"default": True, "tooltip": "Continue from the last checkpoint of this "
                                                                      "run name when there is one."})
        required["validation_prompts"] = ("STRING", {"default": "", "multiline": True,
                                                     "tooltip": "One prompt per line, rendered with the LoRA at "
                                                                "the end (videos in the run's validation folder)."})
        return {"required": required, "optional": _VALIDATION_OPTIONS}

    def train(self, dataset, model, output_dir, name, steps, rank, alpha, learning_rate, batch_size,
              gradient_accumulation, video_size, image_size, frames, mixed_precision, gradient_checkpointing,
              fp8_base, checkpoint_every, seed, resume, validation_prompts, validation_width=None,
              validation_height=None, validation_frames=None, validation_steps=None):
        values = dict(steps=steps, rank=rank, alpha=alpha, learning_rate=learning_rate, batch_size=batch_size,
                      gradient_accumulation=gradient_accumulation, video_size=video_size, image_size=image_size,
                      frames=frames, mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing,
                      fp8_base=fp8_base, checkpoint_every=checkpoint_every, seed=seed)
        folders = _comfy.model_folders()
        if model not in folders:
            raise FileNotFoundError(f"Model folder '{model}' not found in models/EasyAnimate. Put a T2V or InP "
                                    f"model folder there and refresh the page.")
        runs, run = run_folders(output_dir, name)
        # "--flag=value" so that a value starting with "--" is never read as an option.
        command = [sys.executable, "-c", _BOOTSTRAP, str(PACK_ROOT), "train-lora", f"--data={dataset.data}",
                   f"--model={folders[model]}", f"--output={run}", f"--name={name}", f"--cache-dir={runs / 'cache'}"]
        if dataset.data_root:
            command.append(f"--data-root={dataset.data_root}")
        if dataset.default_caption:
            command.append(f"--default-caption={dataset.default_caption}")
        for option, (_, flag) in _OPTIONS.items():
            value = values[option]
            if isinstance(value, bool):
                command += [flag] if value else []
            else:
                command.append(f"{flag}={value}")
        if resume:
            command.append("--resume")
        for prompt in (p.strip() for p in validation_prompts.splitlines()):
            if prompt:
                command.append(f"--validation-prompt={prompt}")
        size = [given if given is not None else _VALIDATION_OPTIONS[key][1]["default"]
                for key, given in (("validation_width", validation_width), ("validation_height", validation_height),
                                   ("validation_frames", validation_frames))]
        command.append("--validation-size={}x{}x{}".format(*size))
        if validation_steps is None:
            validation_steps = _VALIDATION_OPTIONS["validation_steps"][1]["default"]
        command.append(f"--validation-steps={validation_steps}")
        weights = sum(f.stat().st_size for f in (folders[model] / "transformer").glob("*.safetensors"))
        _comfy.make_room(2 * weights)  # the trainer is another process: free what ComfyUI holds on the GPU
        path, tail = run_trainer(command, steps)
        return str(path), tail


def run_folders(output_dir: str, name: str) -> tuple[Path, Path]:
    """(the folder of the runs, this run's folder), resolved; the trainer writes in both and deletes half-written
    entries in the run's folder, so it must lie strictly inside ComfyUI's output folder."""
    if not re.fullmatch(r"[\w.-]+", name) or not name.strip("."):
        raise ValueError(f"name = {name!r}: use letters, digits, '-', '_' and '.' only, with at least one letter or "
                         f"digit (it becomes a folder and a file name).")
    base = _comfy.output_directory().resolve()
    runs = (base / output_dir.strip()).resolve()
    run = (runs / name).resolve()
    if not runs.is_relative_to(base) or run == base or not run.is_relative_to(base):
        raise ValueError(f"output_dir = {output_dir!r} and name = {name!r} give the run folder {run}, which leaves "
                         f"ComfyUI's output folder ({base}): use a relative output_dir inside it, such as "
                         f"EasyAnimate/lora_training, and a plain run name.")
    return runs, run


def run_trainer(command: list[str], total_steps: int) -> tuple[Path, str]:
    """Run the trainer command, streaming its output; returns (LoRA path, last lines of output)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    logger.info("Starting LoRA training: %s", subprocess.list2cmdline(command))
    process = subprocess.Popen(command, cwd=PACK_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, encoding="utf-8", errors="replace", bufsize=1)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    progress = _comfy.Progress(total_steps)
    tail: deque[str] = deque(maxlen=40)
    lora_path = None
    try:
        while True:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                line = None
            if line is _EOF:
                break
            if line is not None:
                tail.append(line)
                logger.info("[train-lora] %s", line)
                step = STEP_LINE.match(line)
                if step:
                    progress.update(int(step.group(1)), int(step.group(2)))
                saved = LORA_LINE.match(line)
                if saved:
                    lora_path = Path(saved.group(1))
            _comfy.check_interrupt()
        code = process.wait()
    except BaseException:
        stop_trainer(process)
        raise
    text = "\n".join(tail)
    if code != 0 or lora_path is None:
        raise RuntimeError(f"LoRA training failed (exit status {code}). Last output:\n{text}")
    return lora_path, text


def _read_lines(stream, lines: queue.Queue) -> None:
    try:
        for line in stream:
            lines.put(line.rstrip("\r\n"))
    finally:
        lines.put(_EOF)


def stop_trainer(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM (the trainer ends after its current step), then a kill if it is still running after ``timeout``."""
    if process.poll() is not None:
        return
    logger.warning("Stopping LoRA training (pid %d); the last checkpoint stays for resume.", process.pid)
    process.terminate()
    started = time.monotonic()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.warning("LoRA training did not stop within %.0f s; killing it.", time.monotonic() - started)
        process.kill()
        process.wait()


NODES = {
    "EasyAnimateTrainingDataset": EasyAnimateTrainingDataset,
    "EasyAnimateTrainLoRA": EasyAnimateTrainLoRA,
}
DISPLAY = {
    "EasyAnimateTrainingDataset": "EasyAnimate Training Dataset",
    "EasyAnimateTrainLoRA": "EasyAnimate Train LoRA",
}
