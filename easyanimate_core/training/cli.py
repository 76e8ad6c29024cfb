"""``python -m easyanimate_core train-lora``: the command line of the LoRA trainer.

Prints one line per optimizer step, ``step 12/1000 loss=0.123456 lr=1.000e-04 time=2.31s`` (the ComfyUI training
node parses these), and ``lora=<path>`` when the LoRA is saved. SIGTERM stops the run at the next step boundary
(a second SIGTERM at once); the last checkpoint stays for ``--resume``. Exit status: 0 done, 2 bad input,
130 stopped.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

import torch

logger = logging.getLogger("easyanimate_core.training")

STOPPED = 130


def _size(text: str) -> tuple[int, int, int]:
    try:
        width, height, frames = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHTxFRAMES, e.g. 672x384x49") from exc
    return width, height, frames


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train-lora", help="train a LoRA on a dataset of captioned images and videos",
                       description="Train a LoRA for the EasyAnimate V5.1 transformer (flow-matching loss as the "
                                   "reference). Runs under `accelerate launch -m easyanimate_core train-lora ...` "
                                   "for several GPUs. See the README section 'LoRA training'.")
    p.add_argument("--data", type=Path, required=True,
                   help="metadata JSON (a list of {file_path, text, type image|video}) or a folder of images and "
                        "videos with same-named .txt captions")
    p.add_argument("--data-root", type=Path, help="folder relative file_path values resolve against (default: "
                                                  "the metadata file's folder)")
    p.add_argument("--default-caption", default="", help="caption of files in a --data folder that have no .txt")
    p.add_argument("--model", required=True, help="model folder (T2V or InP, either layout), or 'demo' for the "
                                                   "built-in tiny random model")
    p.add_argument("--output", type=Path, required=True, help="folder for checkpoints, logs and the final LoRA")
    p.add_argument("--name", help="final LoRA file name without .safetensors (default: the output folder's name)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--rank", type=int, default=128)
    p.add_argument("--alpha", type=float, default=64.0, help="LoRA alpha; the branch is scaled by alpha / rank")
    p.add_argument("--target-modules", default="all",
                   help="'all' (every linear, as the reference) or comma-separated regular expressions matched "
                        "against module paths, e.g. 'attn1\\.to_[qkv],attn2\\.to_[qkv]'")
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--lr-schedule", choices=("constant", "linear", "cosine"), default="constant")
    p.add_argument("--lr-warmup-steps", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1, help="per GPU; a batch holds items of one bucket")
    p.add_argument("--gradient-accumulation", type=int, default=1)
    p.add_argument("--weight-decay", type=float, default=5e-2)
    p.add_argument("--adam-epsilon", type=float, default=1e-10)
    p.add_argument("--max-grad-norm", type=float, default=0.05, help="gradient clipping (0: off)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"),
                   help="compute and frozen-weight dtype (default: bf16 on a GPU, no (fp32) on the CPU)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute blocks in the backward pass "
                                                                          "(much less memory, ~30%% slower)")
    p.add_argument("--fp8-base", action="store_true", help="store the frozen block linears in fp8 "
                                                           "(optimum-quanto; needs --mixed-precision bf16)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--video-size", type=int, default=512, help="a clip of --frames frames trains at about "
                                                               "this side squared pixels")
    p.add_argument("--image-size", type=int, default=1024, help="largest side squared for images and short clips")
    p.add_argument("--frames", type=int, default=49, help="most frames per clip (4k+1)")
    p.add_argument("--frame-stride", type=int, default=3, help="source frames between sampled frames")
    p.add_argument("--caption-dropout", type=float, default=0.1, help="share of samples trained with an empty "
                                                                      "prompt (for classifier-free guidance)")
    p.add_argument("--i2v-ratio", type=float, default=0.5, help="InP models: share of video samples trained with "
                                                                "the first frame given")
    p.add_argument("--no-cache", action="store_true", help="encode captions and clips at every step instead of "
                                                           "once (keeps the VAE and text encoder loaded)")
    p.add_argument("--cache-dir", type=Path, help="where encoded captions and clips are kept (default: "
                                                  "OUTPUT/cache; share it between runs on one dataset)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--checkpoints-keep", type=int, default=3, help="newest checkpoints kept (0: all)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT")
    p.add_argument("--validation-prompt", action="append", default=[], help="render this prompt with the LoRA "
                                                                            "(repeatable)")
    p.add_argument("--validation-every", type=int, default=0, help="steps between validation videos (0: only "
                                                                   "at the end)")
    p.add_argument("--validation-steps", type=int, default=25, help="sampling steps of a validation video")
    p.add_argument("--validation-size", type=_size, default=(672, 384, 49), help="WIDTHxHEIGHTxFRAMES")
    p.add_argument("--validation-guidance", type=float, default=6.0)
    p.add_argument("--save-dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                   help="dtype of the final LoRA file (checkpoints keep float32)")
    return p


def config_from_args(args: argparse.Namespace):
    from .buckets import BucketOptions
    from .config import TrainingConfig

    targets = () if args.target_modules.strip() in ("", "all") else tuple(
        t.strip() for t in args.target_modules.split(",") if t.strip())
    mixed = args.mixed_precision or ("bf16" if torch.cuda.is_available() else "no")
    return TrainingConfig(
        data=args.data, model=args.model, output=args.output, name=args.name, data_root=args.data_root,
        default_caption=args.default_caption,
        steps=args.steps, rank=args.rank, alpha=args.alpha, target_modules=targets, learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule, lr_warmup_steps=args.lr_warmup_steps, batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation, weight_decay=args.weight_decay,
        adam_epsilon=args.adam_epsilon, max_grad_norm=args.max_grad_norm, mixed_precision=mixed,
        gradient_checkpointing=args.gradient_checkpointing, fp8_base=args.fp8_base, seed=args.seed,
        buckets=BucketOptions(video_size=args.video_size, image_size=args.image_size, frames=args.frames,
                              stride=args.frame_stride),
        caption_dropout=args.caption_dropout, i2v_ratio=args.i2v_ratio, cache=not args.no_cache,
        cache_dir=args.cache_dir, checkpoint_every=args.checkpoint_every, checkpoints_keep=args.checkpoints_keep,
        resume=args.resume, validation_prompts=tuple(args.validation_prompt),
        validation_every=args.validation_every, validation_steps=args.validation_steps,
        validation_size=args.validation_size, validation_guidance=args.validation_guidance,
        save_dtype=args.save_dtype,
    )


def print_step(report) -> None:
    print(f"step {report.step}/{report.total} loss={report.loss:.6f} lr={report.lr:.3e} "
          f"time={report.seconds:.2f}s", flush=True)


def run(args: argparse.Namespace) -> int:
    from .loop import TrainingStopped, train

    config = config_from_args(args)
    stop = threading.Event()

    def on_terminate(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        logger.warning("stop requested: ending after the current step (send it again to stop at once)")
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_terminate)
    try:
        result = train(config, on_step=print_step, stop=stop)
    except TrainingStopped as exc:
        logger.warning("%s", exc)
        return STOPPED
    except KeyboardInterrupt:
        logger.warning("training interrupted; continue it from the last checkpoint with --resume")
        return STOPPED
    finally:
        signal.signal(signal.SIGTERM, previous)
    from accelerate import PartialState

    if PartialState().is_main_process:  # one line per run, however many processes trained it
        print(f"lora={result.lora_path.resolve()}", flush=True)
    return 0
