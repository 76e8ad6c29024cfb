"""Every speed lever side by side: seconds per step, peak memory and drift against our eager step, with diffusers'
transformer holding the same weights, in one run.

One step is one forward at batch 2 (CFG's two halves together) of a random-weight InP transformer (``gpu_step.py``
builds both models: ours, then diffusers' sharing its tensors). The levers:

* ``diffusers``: diffusers' EasyAnimateTransformer3DModel;
* ``eager``: ours as it runs by default (SDPA);
* ``compiled``: ours with each block under ``torch.compile`` (regional_compile.py; compile time reported apart);
* ``sage``, ``flash``: ours with that attention kernel (attention_backends.py); where it cannot run here the row
  says why instead of a time;
* ``fp8``, ``fp8_compiled``: ours with the large linears in scaled fp8 and ``torch._scaled_mm`` (fp8_matmul.py),
  quantized from the same weights, eager and compiled;
* ``teacache``: a ``--run-steps`` denoising run with TeaCache 0.1 against the same run without (seconds per step
  over the run, transformer evaluations). Random weights cannot show what a threshold does to a real video.

Step levers are timed in turns (``benchlib.interleaved_times``), after one warm-up call each (which compiles).

    python bench/speed_levers.py --config 12b --device cuda        # 12B, 49x384x672, batch 2, bf16 (GPU owed)
    python bench/speed_levers.py --config mid --device cpu         # D=1024, 4 MMDiT layers (the CPU table)
    python bench/speed_levers.py --config tiny --device cpu --steps 1 --run-steps 3   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator

import benchlib  # puts the repo root on sys.path
import torch
from gpu_step import DTYPES, PRESETS, build_models

from easyanimate_core import EasyAnimateTransformer
from easyanimate_core.attention_backends import select_attention, unavailable_reason
from easyanimate_core.fp8_matmul import FP8, ScaledFp8Linear
from easyanimate_core.loading import assign_tensor
from easyanimate_core.ops import DEFAULT_OPS
from easyanimate_core.regional_compile import compile_block
from easyanimate_core.sampling import Conditioning, denoise
from easyanimate_core.scheduler import FlowMatchEulerScheduler
from easyanimate_core.teacache import TeaCacheOptions

LEVERS = ("diffusers", "eager", "compiled", "sage", "flash", "fp8", "fp8_compiled", "teacache")


def fp8_copy(model: EasyAnimateTransformer) -> EasyAnimateTransformer:
    """``model`` rebuilt with scaled fp8 linears (the layers its HIGH_PRECISION keeps share its tensors)."""
    with torch.device("meta"):
        quantized = EasyAnimateTransformer(model.config, dtype=model.dtype, rope_formula=model.rope_formula,
                                           ops=dataclasses.replace(DEFAULT_OPS, Linear=ScaledFp8Linear),
                                           weight_dtype=FP8)
    for key, tensor in model.state_dict().items():
        assign_tensor(quantized, key, tensor)
    return quantized.eval()


@contextlib.contextmanager
def blocks_swapped(model: EasyAnimateTransformer, blocks: list[torch.nn.Module]) -> Iterator[None]:
    container = getattr(model, model.REPEATED_BLOCKS)
    originals = list(container)
    try:
        for index, block in enumerate(blocks):
            container[index] = block
        yield
    finally:
        for index, block in enumerate(originals):
            container[index] = block


@contextlib.contextmanager
def attention_swapped(model: EasyAnimateTransformer, attention) -> Iterator[None]:
    blocks = list(model.repeated_blocks())
    originals = [block.attention for block in blocks]
    try:
        for block in blocks:
            block.attention = attention
        yield
    finally:
        for block, original in zip(blocks, originals):
            block.attention = original


def within(context_factory: Callable[[], contextlib.AbstractContextManager], fn: Callable[[], torch.Tensor]):
    def run():
        with context_factory():
            return fn()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(PRESETS), default="12b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per step lever, after one warm-up call")
    parser.add_argument("--run-steps", type=int, default=25, help="steps of the TeaCache run (and its baseline)")
    parser.add_argument("--levers", default=",".join(LEVERS), help=f"comma-separated subset of {LEVERS}")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args()
    levers = [name.strip() for name in args.levers.split(",") if name.strip()]
    if unknown := sorted(set(levers) - set(LEVERS)):
        parser.error(f"unknown levers {unknown}: expected names from {LEVERS}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch sees no CUDA device; try --config tiny --device cpu.")
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    preset, dtype, device = PRESETS[args.config], DTYPES[args.dtype], torch.device(args.device)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)

    ours, theirs = build_models(preset.config, dtype, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    gen = torch.Generator(device=device).manual_seed(1)
    shape = (2, 16, preset.frames, preset.height, preset.width)
    latents = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    inpaint = torch.randn((2, 17, *shape[2:]), generator=gen, device=device, dtype=dtype)
    text = torch.randn(2, preset.text_len, preset.config.text_embed_dim, generator=gen, device=device, dtype=dtype)
    timestep = torch.tensor([500.0, 500.0], device=device)

    def step(model):
        return lambda: model(latents, timestep, text, inpaint_latents=inpaint)

    fns: dict[str, Callable[[], torch.Tensor]] = {}
    notes: dict[str, str] = {}
    if "diffusers" in levers:
        fns["diffusers"] = lambda: theirs(latents, timestep, encoder_hidden_states=text, inpaint_latents=inpaint,
                                          return_dict=False)[0]
    fns["eager"] = step(ours)
    if "compiled" in levers:
        compiled = [compile_block(b) for b in ours.repeated_blocks()]
        fns["compiled"] = within(lambda: blocks_swapped(ours, compiled), step(ours))
    for name in ("sage", "flash"):
        if name in levers:
            attention, used = select_attention(name, device, dtype)
            if used == name:
                fns[name] = within(lambda a=attention: attention_swapped(ours, a), step(ours))
            else:
                notes[name] = f"cannot run here: {unavailable_reason(name, device, dtype)}"
    if "fp8" in levers or "fp8_compiled" in levers:
        quantized = fp8_copy(ours)
        if "fp8" in levers:
            fns["fp8"] = step(quantized)
        if "fp8_compiled" in levers:
            compiled_fp8 = [compile_block(b) for b in quantized.repeated_blocks()]
            fns["fp8_compiled"] = within(lambda: blocks_swapped(quantized, compiled_fp8), step(quantized))

    outputs, peaks, first_call = {}, {}, {}
    with torch.inference_mode():
        for name, fn in fns.items():  # one call each on its own: output, peak memory, and compile time
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            outputs[name] = fn().float().cpu()
            sync()
            first_call[name] = time.perf_counter() - start
            peaks[name] = torch.cuda.max_memory_allocated(device) if cuda else None
        times = benchlib.interleaved_times(fns, args.steps, warmup=0, sync=sync)

    print(f"{args.config} preset, {args.dtype} on {device}"
          f"{f' ({torch.cuda.get_device_name(device)})' if cuda else ''}; weights {weight_bytes / 2**30:.2f} GiB; "
          f"latents {list(shape)}, text {preset.text_len}, batch 2; {torch.get_num_threads()} threads; "
          f"{benchlib.machine_description()}")
    reference = outputs["eager"]
    rows = []
    for name in fns:
        median = statistics.median(times[name])
        diff = (outputs[name] - reference).abs().max().item() / reference.abs().max().item()
        rows.append([name, f"{median:.4f}", f"{min(times[name]):.4f}", f"{first_call[name]:.1f}",
                     f"{benchlib.paired_ratio(times, 'diffusers', name):.2f}x" if "diffusers" in fns else "-",
                     f"{benchlib.paired_ratio(times, 'eager', name):.2f}x", f"{diff:.3g}",
                     f"{peaks[name] / 2**30:.2f}" if cuda else "-"])
    rows += [[name, note, "", "", "", "", "", ""] for name, note in notes.items()]
    print()
    print(benchlib.markdown_table(["lever", "s/step (median)", "s/step (min)", "first call s", "speed-up vs diffusers",
                                   "speed-up vs eager", "max abs diff / max abs eager", "peak GiB"], rows))
    if "teacache" in levers:
        print()
        print(teacache_table(ours, preset, dtype, device, args.run_steps, sync))


def teacache_table(model, preset, dtype, device, steps: int, sync) -> str:
    """A ``steps``-step CFG run of one video with and without TeaCache 0.1: s/step over the run and evaluations."""
    gen = torch.Generator(device=device).manual_seed(2)
    shape = (1, 16, preset.frames, preset.height, preset.width)
    noise = torch.randn(shape, generator=gen, device=device)
    text, negative = (torch.randn(1, preset.text_len, preset.config.text_embed_dim, generator=gen, device=device,
                                  dtype=dtype) for _ in "ab")
    inpaint = Conditioning(inpaint_latents=torch.randn(1, 17, *shape[2:], generator=gen, device=device, dtype=dtype))
    evaluations = []
    handle = model.transformer_blocks[0].register_forward_pre_hook(lambda block, inputs: evaluations.append(1))
    rows, reference = [], None
    try:
        for threshold in (0.0, 0.1):
            evaluations.clear()
            sync()
            start = time.perf_counter()
            with torch.inference_mode():
                out = denoise(model, FlowMatchEulerScheduler(), noise=noise, text=text, negative_text=negative,
                              steps=steps, guidance=6.0, conditioning=inpaint, teacache=TeaCacheOptions(threshold))
            sync()
            seconds = time.perf_counter() - start
            reference = out if reference is None else reference
            diff = (out - reference).abs().max().item() / reference.abs().max().item()
            rows.append([f"eager, TeaCache {threshold}", f"{seconds / steps:.4f}", len(evaluations), f"{diff:.3g}"])
    finally:
        handle.remove()
    return (f"{steps}-step run, CFG 6 (random weights: the skip pattern and drift of real videos differ)\n"
            + benchlib.markdown_table(["run", "s/step over the run", "transformer evaluations",
                                       "max abs diff / max abs no cache"], rows))


if __name__ == "__main__":
    main()
