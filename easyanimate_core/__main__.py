"""Command line of the core: ``python -m easyanimate_core generate|make-demo-model|train-lora``.

``generate`` runs every mode from flags and writes an mp4 plus a PNG of the first frame. Without ``--model`` (and
without ``EASYANIMATE_MODELS_DIR``), or with ``--model demo``, it builds the tiny demo model with random weights on
the fly, so the whole pipeline runs on any machine in seconds; its output is noise by construction.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from .atomic_files import remove_stale
from .attention_backends import ATTENTION_BACKENDS
from .conditioning import VARIANTS_FOR_MODE
from .demo import DEMO_V5_VARIANT_CHANNELS, DEMO_VARIANT_CHANNELS, DEMO_VERSIONS, write_demo_model
from .memory import MEMORY_MODES
from .out_of_memory import OutOfMemoryPlan
from .resize import BASE_RESOLUTIONS, DEFAULT_RESIZE, RESIZE_MODES
from .samplers import sampler_name
from .video import check_fps

logger = logging.getLogger("easyanimate_core")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The demo variant that can run each mode.
_DEMO_FOR_MODE = {"t2v": "t2v", "v2v": "t2v", "i2v": "inp", "control": "control", "trajectory": "control",
                  "camera": "camera"}


def _fps(text: str) -> float:
    try:
        return check_fps(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number of frames per second above 0 "
                                         f"(the models were trained at 8)") from None


def _sampler(text: str) -> str:
    try:
        return sampler_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _block_count(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of blocks (0 or more) or 'auto'")
    return count


def _parser() -> argparse.ArgumentParser:
    from .generation import DEFAULT_NEGATIVE_PROMPT

    parser = argparse.ArgumentParser(prog="python -m easyanimate_core", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a video (every mode; see the README for examples)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT)
    gen.add_argument("--model", help="model folder (original or diffusers layout), or 'demo' for the built-in "
                                     "tiny random model; default: $EASYANIMATE_MODELS_DIR, else the demo model")
    gen.add_argument("--frames", type=int, default=49, help="4k+1 frames (1..49 as trained)")
    gen.add_argument("--width", type=int, default=672, help="multiple of 16")
    gen.add_argument("--height", type=int, default=384, help="multiple of 16")
    gen.add_argument("--round", action="store_true", help="round frames down to 4k+1 and size to multiples of 16")
    gen.add_argument("--size-from-image", type=int, choices=BASE_RESOLUTIONS, metavar="BASE",
                     help="take width and height from the input image or video instead: the trained size nearest "
                          "its aspect ratio at base resolution 512, 768, 960 or 1024 (replaces --width/--height)")
    gen.add_argument("--resize", choices=RESIZE_MODES, default=DEFAULT_RESIZE,
                     help="how input images and videos of another aspect ratio fit width x height: crop (scale to "
                          "cover, keep the centre, as in training), pad (scale to fit, black borders), stretch")
    gen.add_argument("--steps", type=int, default=50)
    gen.add_argument("--sampler", type=_sampler, metavar="NAME",
                     help="V5.1 (flow) models: 'Flow' (the released schedule, default), 'Flow UniPC', 'Flow DPM++'; "
                          "V5 (DDPM-family) models: 'Euler', 'Euler A', 'DPM++', 'PNDM', 'DDIM' (default, as the "
                          "official V5 workflows), built from the model's scheduler_config.json; any case, '_' or "
                          "'-' for spaces (ddim, euler_a)")
    gen.add_argument("--guidance", type=float, default=6.0)
    gen.add_argument("--guidance-rescale", type=float, default=0.0)
    gen.add_argument("--teacache", type=float, nargs="?", const=0.1, default=0.0, metavar="THRESHOLD",
                     help="step caching: reuse the transformer's residual while its input barely changes "
                          "(alone: 0.1, the official default; 0 = off; higher = faster, less faithful)")
    gen.add_argument("--teacache-start-steps", type=int, default=1, help="first steps always computed")
    gen.add_argument("--teacache-end-steps", type=int, default=1, help="last steps always computed")
    gen.add_argument("--compile", action="store_true",
                     help="torch.compile each transformer block (regional; the first step compiles)")
    gen.add_argument("--attention", choices=ATTENTION_BACKENDS, default="sdpa",
                     help="attention kernel: PyTorch SDPA, flash-attn, SageAttention, or the fastest that runs "
                          "here (auto); an unavailable one falls back to SDPA with the reason logged")
    gen.add_argument("--fp8-matmul", action="store_true",
                     help="store the transformer's large linears in fp8 with per-row scales and multiply in fp8 "
                          "(fp8 tensor cores: compute capability 8.9+, --dtype bfloat16, the GPU default); "
                          "elsewhere they compute in the model dtype")
    gen.add_argument("--cfg-skip-ratio", type=float, default=0.0,
                     help="share of the last steps run without the negative prompt's pass (the official option)")
    gen.add_argument("--seed", type=int, default=43)
    gen.add_argument("--strength", type=float, default=1.0, help="video-to-video denoise strength (0..1]")
    gen.add_argument("--start-image", type=Path, help="image-to-video: the first frame (InP models)")
    gen.add_argument("--end-image", type=Path, help="image-to-video: the last frame (InP models)")
    gen.add_argument("--input-video", type=Path, help="video-to-video: the video to transform")
    gen.add_argument("--control-video", type=Path, help="control: canny/pose/depth/... video (Control models)")
    gen.add_argument("--reference-image", type=Path, help="control, trajectory, camera: the reference image")
    gen.add_argument("--trajectory", help="trajectory control: a JSON file or string in any supported format")
    gen.add_argument("--camera", help="camera control: preset name(s), several joined by '+' move at once "
                                      "(e.g. 'Pan Up+Pan Left')")
    gen.add_argument("--camera-file", help="camera control: a CameraCtrl/RealEstate10K pose file")
    gen.add_argument("--camera-speed", type=float, default=1.0)
    gen.add_argument("--fps", type=_fps, default=8, help="frames per second of the mp4")
    gen.add_argument("--tile-size", type=int, help="decode in spatial tiles of this many pixels (saves memory); "
                                                   "default: whole frames when they fit in free memory, otherwise "
                                                   "the largest tiles that fit")
    gen.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on a GPU, float32 on the CPU")
    gen.add_argument("--memory-mode", choices=MEMORY_MODES, default="model_cpu_offload",
                     help="where the models wait between uses and how weights are stored (README: which to pick)")
    gen.add_argument("--blocks-on-gpu", type=_block_count, default=None,
                     help="block_swap: transformer blocks kept on the GPU (default: as many as fit in free VRAM)")
    gen.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    gen.add_argument("--output", type=Path, default=Path("outputs/easyanimate.mp4"), help="mp4 path; a PNG of "
                                                                                          "the first frame is "
                                                                                          "written beside it")

    demo = sub.add_parser("make-demo-model", help="write the tiny random demo model as a complete model folder")
    demo.add_argument("folder", type=Path)
    demo.add_argument("--version", choices=DEMO_VERSIONS, default="5.1",
                      help="5.1: Qwen2-VL text encoder and flow scheduler; 5: Bert + mT5 text encoders and a DDIM "
                           "scheduler (default: 5.1)")
    demo.add_argument("--variant", choices=sorted(set(DEMO_VARIANT_CHANNELS) | set(DEMO_V5_VARIANT_CHANNELS)),
                      default="t2v", help=f"V5.1: {', '.join(DEMO_VARIANT_CHANNELS)}; V5: "
                                          f"{', '.join(DEMO_V5_VARIANT_CHANNELS)} (default: t2v)")

    from .training.cli import add_parser as add_train_lora_parser

    add_train_lora_parser(sub)
    return parser


def _camera_path(args: argparse.Namespace):
    from .camera import combine, read_pose_file, resample, split_combination

    if args.camera is not None and args.camera_file is not None:
        raise ValueError("give either --camera or --camera-file, not both")
    if args.camera_file is not None:
        return resample(read_pose_file(args.camera_file), args.frames)
    if args.camera is not None:
        return combine(*split_combination(args.camera), frames=args.frames, speed=args.camera_speed)
    return None


def _trajectory(args: argparse.Namespace):
    from .trajectory import parse_trajectory

    if args.trajectory is None:
        return None
    text = args.trajectory
    if not text.lstrip().startswith(("[", "{")) and Path(text).is_file():
        text = Path(text).read_text(encoding="utf-8")
    return parse_trajectory(text, canvas_size=(args.width, args.height))


def _size_from_image(base: int, media: dict) -> tuple[int, int]:
    """--size-from-image: the trained size nearest the aspect ratio of the first input image or video."""
    from .resize import bucket_size

    for name, flag in (("start_images", "--start-image"), ("end_images", "--end-image"),
                       ("reference_image", "--reference-image"), ("input_video", "--input-video"),
                       ("control_video", "--control-video")):
        if media[name] is not None:
            height, width = media[name].shape[1:3]
            size = bucket_size(width, height, base)
            logger.info("--size-from-image %d: %dx%d, the trained size nearest the %dx%d of %s.", base, *size, width,
                        height, flag)
            return size
    raise ValueError(f"--size-from-image {base} reads the size of an input image or video, and none was given: add "
                     f"--start-image, --end-image, --reference-image, --input-video or --control-video, or drop "
                     f"--size-from-image and set --width and --height.")


def _request(args: argparse.Namespace):
    from .generation import GenerationRequest
    from .teacache import TeaCacheOptions
    from .video import read_image, read_video

    settings = GenerationRequest(
        width=args.width, height=args.height, frames=args.frames, steps=args.steps, guidance=args.guidance,
        guidance_rescale=args.guidance_rescale, seed=args.seed, strength=args.strength,
        cfg_skip_ratio=args.cfg_skip_ratio, allow_rounding=args.round, resize=args.resize, sampler=args.sampler,
        teacache=TeaCacheOptions(args.teacache, args.teacache_start_steps, args.teacache_end_steps))
    settings.checked_settings()  # the numbers and the size first: refused before any image, video or weight is read
    media = dict(
        start_images=read_image(args.start_image) if args.start_image else None,
        end_images=read_image(args.end_image) if args.end_image else None,
        input_video=read_video(args.input_video, args.frames) if args.input_video else None,
        control_video=read_video(args.control_video, args.frames) if args.control_video else None,
        reference_image=read_image(args.reference_image) if args.reference_image else None,
    )
    if args.size_from_image is not None:  # before the trajectory, whose pixel coordinates use the output size
        args.width, args.height = _size_from_image(args.size_from_image, media)
    return dataclasses.replace(settings, width=args.width, height=args.height, **media, trajectory=_trajectory(args),
                               camera=_camera_path(args)).checked()


def _model_for(mode: str, model_arg: str | None) -> Path | None:
    """The model folder to use, or None for the demo model."""
    if model_arg == "demo":
        return None
    if model_arg:
        return Path(model_arg)
    root = os.environ.get("EASYANIMATE_MODELS_DIR")
    if not root:
        return None
    root = Path(root)
    if (root / "transformer" / "config.json").is_file():
        return root
    found = []
    for folder in sorted(p for p in root.iterdir() if (p / "transformer" / "config.json").is_file()):
        from .loading import inspect_transformer

        variant = inspect_transformer(folder).variant  # as the loader node and the trainer read it
        found.append(f"{folder.name} ({variant})")
        if variant in VARIANTS_FOR_MODE[mode]:
            return folder
    raise SystemExit(f"EASYANIMATE_MODELS_DIR={root} holds no model for {mode} (found: {found or 'none'}); "
                     f"pass --model.")


def generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .attention_backends import select_attention
    from .generation import (decode_latents, denoise_activation_bytes, prepare_inputs, require_model_for,
                             run_denoise)
    from .loading import inspect_model, load_scheduler, load_transformer, load_vae
    from .memory import Placement
    from .ops import DEFAULT_OPS
    from .out_of_memory import Workload, explain_out_of_memory
    from .regional_compile import compiled_blocks
    from .text_encoder import load_text_encoder
    from .video import write_mp4, write_png

    request = _request(args)
    args.output = args.output.with_suffix(".mp4")
    remove_stale(args.output.parent)  # what a killed run left half-written there
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model_dir = _model_for(request.mode, args.model)
    if model_dir is not None:  # every config, and the mode against the variant: no weight read yet
        require_model_for(inspect_model(model_dir), request)
    model_label = str(model_dir) if model_dir is not None else "the random demo model"
    with tempfile.TemporaryDirectory(prefix="easyanimate-demo-") as scratch:
        if model_dir is None:
            variant = _DEMO_FOR_MODE[request.mode]
            model_dir = write_demo_model(Path(scratch) / "demo", variant=variant, seed=0)
            logger.warning("Using the built-in tiny DEMO model (%s) with RANDOM weights: the video will be noise. "
                           "Pass --model PATH (or set EASYANIMATE_MODELS_DIR) for real weights.", variant)
        scheduler = load_scheduler(model_dir)
        sampler = scheduler.check_sampler(request.sampler, request.steps)  # before any weight is read
        started = time.perf_counter()
        placement = Placement(args.memory_mode, device, torch.device("cpu"), blocks_on_gpu=args.blocks_on_gpu)
        workload = Workload(request.width, request.height, request.frames)

        def stage(name: str, vae_tiles: bool = False):  # an out-of-memory error in it leaves as a plan
            return explain_out_of_memory(name, device, memory_mode=args.memory_mode, workload=workload,
                                         vae_tiles=vae_tiles)

        with stage("loading the text encoder"):
            encoder = load_text_encoder(model_dir, dtype=dtype, device=placement.resting_device, fp8=placement.fp8)
        with stage("text encoding"), placement.active(encoder):
            prompt = encoder.encode([args.prompt])
            negative = encoder.encode([args.negative_prompt]) if request.guidance > 1.0 else None
        del encoder  # the text encoder is not needed for sampling
        attention, _ = select_attention(args.attention, device, dtype)
        with stage("loading the transformer and the VAE"):
            transformer = load_transformer(model_dir, dtype=dtype, device=placement.resting_device,
                                           fp8="fp8_scaled" if args.fp8_matmul else placement.fp8,
                                           ops=dataclasses.replace(DEFAULT_OPS, attention=attention))
            vae = load_vae(model_dir, dtype=dtype, device=placement.resting_device)
    logger.info("%s: %s at %dx%dx%d, %d steps of %s, %s (models loaded in %.1f s)",
                transformer.config.variant_description, request.mode, request.width, request.height, request.frames,
                request.steps, sampler, args.memory_mode, time.perf_counter() - started)
    started = time.perf_counter()
    with stage("VAE encode of the input images and videos", vae_tiles=True), placement.active(vae):
        prepared = prepare_inputs(transformer.config, vae, request)
    working = denoise_activation_bytes(transformer, prepared, prompt, negative)
    compiling = args.compile and _can_compile(args.memory_mode)

    def on_step(step: int, total: int, _) -> None:
        bar.total = total  # PNDM's schedule evaluates the model more often than the steps asked
        bar.update(1)

    with (stage("sampling"), tqdm(total=request.steps, desc="sampling", unit="step") as bar,
          placement.active(transformer, working),
          compiled_blocks(transformer) if compiling else contextlib.nullcontext()):
        latents = run_denoise(transformer, scheduler, prepared, prompt, negative, callback=on_step)
    with stage("VAE decode", vae_tiles=True), placement.active(vae):
        frames = decode_latents(vae, latents, tile_size=args.tile_size or "auto")
    write_mp4(args.output, frames, fps=args.fps)
    png = write_png(args.output.with_suffix(".png"), frames[0])
    print(f"{request.mode}: {frames.shape[0]} frames {request.width}x{request.height} in "
          f"{time.perf_counter() - started:.1f} s with {model_label} -> {args.output} (first frame: {png})")
    return 0


def _can_compile(memory_mode: str) -> bool:
    """Regional compile runs with whole blocks in place; the streaming modes move weights in hooks per call."""
    if memory_mode in ("sequential_cpu_offload", "block_swap"):
        logger.warning("--compile is skipped with --memory-mode %s: its per-block weight streaming runs in hooks "
                       "that torch.compile would trace; use model_cpu_offload or an fp8 mode to compile.",
                       memory_mode)
        return False
    return True


def make_demo_model(args: argparse.Namespace) -> int:
    folder = write_demo_model(args.folder, variant=args.variant, version=args.version)
    print(f"Wrote the tiny random EasyAnimate V{args.version} demo model ({args.variant}) to {folder}")
    return 0


def train_lora(args: argparse.Namespace) -> int:
    from .training.cli import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return {"generate": generate, "make-demo-model": make_demo_model, "train-lora": train_lora}[args.command](args)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    except OutOfMemoryPlan as exc:  # where, what, and what to change: no traceback
        logger.error("%s", exc)
        return 3
    except OSError as exc:  # an output that could not be written whole: the path and the reason
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
