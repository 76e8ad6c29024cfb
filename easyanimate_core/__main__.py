"""Command line of the core: ``python -m easyanimate_core smoke``.

``smoke`` loads a model folder (or writes and loads the built-in tiny demo model), runs a few flow-matching steps
from noise with stand-in text states and decodes the result to a PNG. It checks that the transformer, the VAE, the
scheduler and the loaders work together on this machine; prompt-driven generation comes with the text encoder.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from .demo import DEMO_VARIANT_CHANNELS, write_demo_model
from .loading import load_scheduler, load_transformer, load_vae

logger = logging.getLogger("easyanimate_core")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _positive_multiple(value: str, multiple: int, name: str) -> int:
    number = int(value)
    if number < multiple or number % multiple:
        raise argparse.ArgumentTypeError(f"{name} = {number}: expected a positive multiple of {multiple}")
    return number


def _frames(value: str) -> int:
    number = int(value)
    if number < 1 or (number - 1) % 4:
        raise argparse.ArgumentTypeError(f"frames = {number}: expected 4k+1 (1, 5, 9, ..., 49)")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m easyanimate_core", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    smoke = sub.add_parser("smoke", help="run the core end to end on a model folder or the built-in demo model")
    smoke.add_argument("--model", default=None,
                       help="model folder (original or diffusers layout); default: the built-in tiny demo model")
    smoke.add_argument("--variant", choices=sorted(DEMO_VARIANT_CHANNELS), default="t2v",
                       help="variant of the demo model (ignored with --model)")
    smoke.add_argument("--width", type=lambda v: _positive_multiple(v, 16, "width"), default=96)
    smoke.add_argument("--height", type=lambda v: _positive_multiple(v, 16, "height"), default=64)
    smoke.add_argument("--frames", type=_frames, default=9)
    smoke.add_argument("--steps", type=int, default=4)
    smoke.add_argument("--seed", type=int, default=0)
    smoke.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    smoke.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    smoke.add_argument("--output", type=Path, default=Path("outputs/smoke.png"), help="PNG of the first frame")
    return parser


def smoke(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="easyanimate-demo-") as scratch:
        if args.model is None:
            model_dir = write_demo_model(Path(scratch) / "demo", variant=args.variant, seed=args.seed)
            logger.warning("No --model given: using the built-in tiny DEMO model with RANDOM weights (%s). "
                           "Its output is noise; it only proves the pipeline runs.", args.variant)
        else:
            model_dir = Path(args.model)
        dtype, device = DTYPES[args.dtype], torch.device(args.device)
        started = time.perf_counter()
        transformer = load_transformer(model_dir, dtype=dtype, device=device)
        vae = load_vae(model_dir, dtype=dtype, device=device)
        scheduler = load_scheduler(model_dir)
        load_s = time.perf_counter() - started
    cfg = transformer.config
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    t = (args.frames - 1) // 4 + 1
    shape = (1, 16, t, args.height // 8, args.width // 8)
    latents = torch.randn(shape, generator=gen).to(device, dtype)
    # Stand-in for the text encoder: the same random states for every step.
    text = torch.randn(1, 16, cfg.text_embed_dim, generator=gen).to(device, dtype)
    extra_channels = cfg.in_channels - 16
    extra = {}
    if extra_channels:
        key = "inpaint_latents" if cfg.variant == "inp" else "control_latents"
        extra[key] = torch.zeros(1, extra_channels, *shape[2:], device=device, dtype=dtype)
    schedule = scheduler.schedule(args.steps, device=device)
    started = time.perf_counter()
    with torch.inference_mode():
        for i, timestep in enumerate(schedule.timesteps):
            velocity = transformer(latents, timestep, text, **extra)
            latents = scheduler.step(velocity, schedule, i, latents)
            logger.info("step %d/%d", i + 1, len(schedule))
        video = vae.decode(latents / vae.scaling_factor)  # [1, 3, F, H, W] in [-1, 1]
    sample_s = time.perf_counter() - started
    frame = ((video[0, :, 0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [3, H, W]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    import cv2

    cv2.imwrite(str(args.output), frame.permute(1, 2, 0).flip(-1).cpu().numpy())
    print(f"{cfg.variant_description}: {sum(p.numel() for p in transformer.parameters()) / 1e6:.2f} M parameters, "
          f"loaded in {load_s:.2f} s")
    print(f"{args.steps} steps at {args.width}x{args.height}x{args.frames} on {device} ({args.dtype}): "
          f"{sample_s:.2f} s; video {tuple(video.shape)}; first frame -> {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    return {"smoke": smoke}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
