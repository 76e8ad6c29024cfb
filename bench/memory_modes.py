"""Memory modes: peak memory, seconds per step and fp8 error of every mode, ours against diffusers' equivalents.

Every measurement runs in a fresh subprocess (one implementation, one mode), so no other model's memory or
allocator state counts. A child records its RSS after imports, resets the high-water mark
(``/proc/self/clear_refs``), loads or builds the transformer, applies the mode, then runs one transformer forward at
batch 2 (its output is compared between modes) and a ``--steps`` denoise with classifier-free guidance through
``easyanimate_core.sampling.denoise`` (batch 2 per step), timing each step. It reports VmHWM (peak host memory,
mapped file pages included), the stored weight bytes (fp8 payload and scales, not the dtype a quantized tensor
reports) and, on CUDA, the peak VRAM of the steps.

Modes and diffusers' counterparts (diffusers' ``enable_*_cpu_offload`` belong to a pipeline; the accelerate calls
they install per model are used instead, and the model is called with the timestep cast to its dtype, as its
pipeline does):

    full                            -> the plain model
    model_cpu_offload               -> accelerate.cpu_offload_with_hook (enable_model_cpu_offload)
    model_cpu_offload_and_qfloat8   -> optimum-quanto qfloat8 with our kept layers, then cpu_offload_with_hook
    model_cpu_offload_and_fp8_cast  -> enable_layerwise_casting(float8_e4m3fn), then cpu_offload_with_hook
    sequential_cpu_offload          -> accelerate.cpu_offload (enable_sequential_cpu_offload)
    block_swap                      -> enable_group_offload(block_level, 1 block per group, CUDA stream)

On the CPU the compute and offload devices are both the CPU, so every device move is a no-op: the CPU numbers show
what each mode costs in host memory and time for its hooks, quantization and casts, not what it saves on a GPU.
CPU runs read checkpoint files (the tiny demo model of ``easyanimate_core.demo`` and a mid-size D=1024
transformer, both written by the parent; diffusers reads a diffusers-layout copy); CUDA runs build random weights
on the device like ``gpu_step.py`` (no files) and move them to the host for the offload modes.

    python bench/memory_modes.py                                         # CPU: tiny and mid, all modes (~4.5 min)
    python bench/memory_modes.py --config tiny --device cpu              # CPU smoke test (~1.5 min)
    python bench/memory_modes.py --device cuda --config 12b --size 384x672x49 --steps 25
    python bench/memory_modes.py --device cuda --config 12b --part vae --size 576x1008x49 --tiles none,512,384,256
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib  # puts the repo root on sys.path
import torch

from easyanimate_core import (
    EasyAnimateTransformer,
    FlowMatchEulerScheduler,
    TransformerConfig,
    convert_transformer_state_dict,
)
from easyanimate_core.memory import MEMORY_MODES, Placement, store_in_fp8
from easyanimate_core.sampling import Conditioning, denoise

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
WEIGHTS = "diffusion_pytorch_model.safetensors"
GUIDANCE = 6.0
CPU = torch.device("cpu")


@dataclasses.dataclass(frozen=True)
class Preset:
    size: str  # default video size, HxWxF in pixels and frames
    text_len: int
    files: bool  # CPU runs read checkpoints the parent writes; others build random weights on the device


PRESETS = {
    "tiny": Preset("64x96x5", text_len=16, files=True),  # the demo InP model: 4 heads x 16, 2 MMDiT layers
    "mid": Preset("128x192x5", text_len=32, files=True),  # D=1024, --mid-layers MMDiT layers, text 3584
    "7b": Preset("384x672x49", text_len=256, files=False),  # 48 heads x 64, 36 layers (18 MMDiT), text 3584
    "12b": Preset("384x672x49", text_len=256, files=False),  # 48 heads x 64, 48 MMDiT layers, text 3584
}
VAE_MODELS = {  # diffusers AutoencoderKLMagvit arguments; ours is built from the resulting config
    "tiny": {"block_out_channels": [16, 32, 32, 32], "norm_num_groups": 8, "layers_per_block": 1},
    "v5.1": {},
}


def transformer_config(name: str, mid_layers: int) -> TransformerConfig:
    from easyanimate_core.demo import demo_transformer_config

    big = {"num_attention_heads": 48, "attention_head_dim": 64, "text_embed_dim": 3584,
           "add_norm_text_encoder": True, "in_channels": 33}
    return {
        "tiny": lambda: demo_transformer_config("inp"),
        "mid": lambda: TransformerConfig(num_attention_heads=16, attention_head_dim=64, num_layers=mid_layers,
                                         mmdit_layers=mid_layers, text_embed_dim=3584, add_norm_text_encoder=True,
                                         in_channels=33),
        "7b": lambda: TransformerConfig(num_layers=36, mmdit_layers=18, **big),
        "12b": lambda: TransformerConfig(num_layers=48, mmdit_layers=48, **big),
    }[name]().validate(f"the {name} benchmark preset")


def parse_size(size: str) -> tuple[int, int, int]:
    """``HxWxF`` (pixels, frames) -> latent (T, h, w)."""
    height, width, frames = (int(v) for v in size.lower().split("x"))
    if (frames - 1) % 4 or height % 16 or width % 16:
        raise ValueError(f"--size {size}: expected HxWxF with H and W multiples of 16 and F = 1 + 4k.")
    return 1 + (frames - 1) // 4, height // 8, width // 8


# ---------------------------------------------------------------------------------------------------- measuring


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def _stored(t: torch.Tensor) -> int:
    """Bytes ``t`` occupies: a quanto tensor counts its fp8 payload and scales, not the dtype it reports."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(_stored(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def stored_bytes(module: torch.nn.Module) -> dict[str, int]:
    """All weight bytes, and the fp8-stored weights' bytes next to what they take in the model dtype."""
    tensors = [*module.parameters(), *module.buffers()]
    fp8 = [t for t in tensors if getattr(t, "_data", t).dtype in FP8]
    return {"all": sum(map(_stored, tensors)), "fp8": sum(map(_stored, fp8)),
            "fp8_as_bf16": sum(t.numel() * 2 for t in fp8)}


class DiffusersCall(torch.nn.Module):
    """diffusers' transformer behind our call signature, so ``denoise`` drives both alike. The timestep is cast to
    the model dtype before the call, as diffusers' EasyAnimate pipelines do."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.model = model
        self._dtype, self._device = dtype, device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def forward(self, latents, timestep, text_states, *, inpaint_latents=None, control_latents=None):
        return self.model(latents, timestep.to(self._dtype), encoder_hidden_states=text_states,
                          inpaint_latents=inpaint_latents, control_latents=control_latents, return_dict=False)[0]


def _ours(job: dict, config: TransformerConfig, dtype: torch.dtype, placement: Placement):
    """Our transformer as the loader leaves it (resting device, fp8 storage of the mode) and its placement context."""
    if job["folder"]:
        from easyanimate_core import load_transformer

        model = load_transformer(job["folder"], dtype=dtype, device=placement.resting_device, fp8=placement.fp8)
    else:
        import gpu_step

        model, theirs = gpu_step.build_models(config, dtype, placement.compute)
        del theirs  # it shares our tensors; dropped before ours moves, so the device copy can go
        model.to(placement.resting_device)
        if placement.fp8:
            store_in_fp8(model, placement.fp8)
    return model, model, lambda: placement.active(model)


def _diffusers(job: dict, config: TransformerConfig, dtype: torch.dtype, placement: Placement):
    """diffusers' transformer with the counterpart of ``job["mode"]`` applied (see the module docstring)."""
    import accelerate

    compute, offload, mode = placement.compute, placement.offload, job["mode"]
    if job["folder"]:
        from diffusers import EasyAnimateTransformer3DModel

        model = EasyAnimateTransformer3DModel.from_pretrained(job["folder"], torch_dtype=dtype)
    else:
        import gpu_step

        ours, model = gpu_step.build_models(config, dtype, compute)
        del ours
    model = model.eval().requires_grad_(False)
    context = contextlib.nullcontext
    if mode == "full":
        model.to(compute)
    elif mode == "sequential_cpu_offload":
        model.to(offload)
        accelerate.cpu_offload(model, execution_device=compute, offload_buffers=len(model._parameters) > 0)
    elif mode == "block_swap":
        model.to(offload)
        model.enable_group_offload(onload_device=compute, offload_device=offload, offload_type="block_level",
                                   num_blocks_per_group=1, use_stream=compute.type == "cuda")
    else:
        model.to(offload)
        if mode == "model_cpu_offload_and_qfloat8":
            from optimum.quanto import freeze, qfloat8, quantize

            quantize(model, weights=qfloat8, exclude=list(EasyAnimateTransformer.HIGH_PRECISION))
            freeze(model)
        elif mode == "model_cpu_offload_and_fp8_cast":
            model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
        _, hook = accelerate.cpu_offload_with_hook(model, execution_device=compute)

        @contextlib.contextmanager
        def context():
            try:
                yield
            finally:
                hook.offload()

    return model, DiffusersCall(model, dtype, compute), context


def transformer_child(job: dict) -> dict:
    """One implementation in one mode: load, one forward, a ``steps``-step CFG denoise; memory and times."""
    device, dtype = torch.device(job["device"]), DTYPES[job["dtype"]]
    cuda = device.type == "cuda"
    config = transformer_config(job["config"], job["mid_layers"])
    placement = Placement(job["mode"], device, CPU, blocks_on_gpu=job["blocks_on_gpu"])
    frames, h, w = parse_size(job["size"])
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 16, frames, h, w, generator=gen)
    text = torch.randn(1, job["text_len"], config.text_embed_dim, generator=gen)
    negative = torch.randn(1, job["text_len"], config.text_embed_dim, generator=gen)
    extra_channels = config.in_channels - 16
    conditioning = Conditioning(inpaint_latents=torch.randn(1, extra_channels, frames, h, w, generator=gen)
                                if config.variant == "inp" else None,
                                control_latents=torch.randn(1, extra_channels, frames, h, w, generator=gen)
                                if config.variant != "inp" and extra_channels else None)
    # What the setup imports is imported before the baseline (module code is not model memory); quanto only
    # where it is used, as its import alone takes seconds. accelerate's hooks import torch._dynamo (~0.1 GB) at
    # their first call.
    import accelerate  # noqa: F401
    from torch import _dynamo  # noqa: F401

    from easyanimate_core import load_transformer  # noqa: F401

    if job["mode"] == "model_cpu_offload_and_qfloat8":
        import optimum.quanto  # noqa: F401
    if job["impl"] == "diffusers" or not job["folder"]:
        import gpu_step  # noqa: F401
        from diffusers import EasyAnimateTransformer3DModel  # noqa: F401
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    if cuda:
        torch.zeros(1, device=device)  # the CUDA context belongs to the baseline

    base = _proc_status()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    start = time.perf_counter()
    setup = _ours if job["impl"] == "ours" else _diffusers
    model, call, context = setup(job, config, dtype, placement)
    sync()
    load_s = time.perf_counter() - start
    loaded = _proc_status()
    weights = stored_bytes(model)
    if cuda:
        torch.cuda.empty_cache()
        vram_loaded = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)

    scheduler = FlowMatchEulerScheduler()
    stamps: list[float] = []

    def stamp(*_):
        sync()
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    with context():
        enter_s = time.perf_counter() - start
        with torch.inference_mode():
            extra = conditioning.batched(2, dtype, device)
            start = time.perf_counter()
            forward = call(noise.to(device, dtype).expand(2, -1, -1, -1, -1), torch.full((2,), 500.0, device=device),
                           torch.cat([negative, text]).to(device, dtype), **extra).float().cpu()
            sync()
            forward_s = time.perf_counter() - start
            stamp()
            latents = denoise(call, scheduler, noise=noise, text=text, negative_text=negative, steps=job["steps"],
                              guidance=GUIDANCE, conditioning=conditioning, callback=stamp)
            latents = latents.float().cpu()
    result = {
        "base_rss": base["VmRSS"], "load_peak": loaded["VmHWM"], "loaded_rss": loaded["VmRSS"],
        "peak": _proc_status()["VmHWM"], "load_s": load_s, "enter_s": enter_s, "forward_s": forward_s,
        "step_s": [b - a for a, b in itertools.pairwise(stamps)], "weights": weights,
    }
    if cuda:
        result.update(vram_loaded=vram_loaded, vram_peak=torch.cuda.max_memory_allocated(device),
                      vram_reserved=torch.cuda.max_memory_reserved(device),
                      gpu=torch.cuda.get_device_name(device))
    torch.save({"forward": forward, "latents": latents}, job["out"])
    return result


def vae_child(job: dict) -> dict:
    """Decode random latents of ``size`` with one VAE (random weights on the device), tiled or not."""
    from diffusers import AutoencoderKLMagvit

    from easyanimate_core import MagvitVAE, vae_config_from_dict

    device, dtype = torch.device(job["device"]), DTYPES[job["dtype"]]
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    with torch.device("meta"):
        theirs = AutoencoderKLMagvit(**VAE_MODELS[job["vae"]])
        ours = MagvitVAE(vae_config_from_dict(dict(theirs.config)), dtype=dtype)
    ours = benchlib.random_fill_(ours.to_empty(device=device), seed=0).eval()
    tile = job["tile"]
    if job["impl"] == "ours":
        def decode(z):
            return ours.decode(z, tile_size=tile)
    else:
        theirs.load_state_dict(ours.state_dict(), strict=True, assign=True)
        theirs = theirs.eval()
        del ours
        if tile is not None:
            theirs.enable_tiling(tile_sample_min_height=tile, tile_sample_min_width=tile,
                                 tile_sample_stride_height=tile * 3 // 4, tile_sample_stride_width=tile * 3 // 4)

        def decode(z):
            return theirs.decode(z).sample.clamp(-1, 1)

    frames, h, w = parse_size(job["size"])  # both VAE configs compress 8x in space
    latents = torch.randn(1, 16, frames, h, w, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.inference_mode():
        for _ in range(job["runs"]):
            sync()
            start = time.perf_counter()
            video = decode(latents)
            sync()
            times.append(time.perf_counter() - start)
    result = {"times": times, "shape": list(video.shape)}
    if cuda:
        result.update(vram_peak=torch.cuda.max_memory_allocated(device),
                      vram_reserved=torch.cuda.max_memory_reserved(device), gpu=torch.cuda.get_device_name(device))
    torch.save(video[:, :, :: max(1, video.shape[2] // 4)].float().cpu(), job["out"])
    return result


def run_child(job: dict) -> dict:
    """``job`` in a fresh interpreter; failures come back as ``{"error": ...}`` so the other rows still run."""
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                          check=False)
    if proc.returncode:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------ writing


def write_checkpoints(root: Path, name: str, mid_layers: int) -> dict[str, Path]:
    """bf16 transformer folders for ours (original layout) and diffusers (diffusers layout) under ``root/name``."""
    from safetensors.torch import load_file, save_file

    config = transformer_config(name, mid_layers)
    if name == "tiny":
        from easyanimate_core.demo import write_demo_model

        original = write_demo_model(root / name, variant="inp", seed=0) / "transformer"
        state = {k: v.to(torch.bfloat16) for k, v in load_file(original / WEIGHTS).items()}
        save_file(state, original / WEIGHTS)  # the demo writes fp32; the modes run bf16 like the released files
    else:
        with torch.device("meta"):
            model = EasyAnimateTransformer(config, dtype=torch.float32)
        model = benchlib.random_fill_(model.to_empty(device="cpu"), seed=0)
        state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
        del model
        original = root / name / "transformer"
        original.mkdir(parents=True)
        (original / "config.json").write_text(json.dumps({"_class_name": "EasyAnimateTransformer3DModel",
                                                          **dataclasses.asdict(config)}, indent=2))
        save_file(state, original / WEIGHTS)
    theirs = root / name / "diffusers-transformer"
    theirs.mkdir(parents=True)
    (theirs / "config.json").write_text(json.dumps({"_class_name": "EasyAnimateTransformer3DModel",
                                                    **benchlib.diffusers_transformer_kwargs(config)}, indent=2))
    save_file(convert_transformer_state_dict(state, "original", "diffusers"), theirs / WEIGHTS)
    return {"ours": original, "diffusers": theirs}


# ------------------------------------------------------------------------------------------------------ tables


def rel_errors(got: torch.Tensor, reference: torch.Tensor) -> str:
    """max |got - ref| / max |ref| and mean |got - ref| / mean |ref|."""
    diff = (got - reference).abs()
    return f"{(diff.max() / reference.abs().max()).item():.2g} / {(diff.mean() / reference.abs().mean()).item():.2g}"


def _size(n: float, unit: str) -> str:
    return f"{n / 1e9:.3f}" if unit == "GB" else f"{n / 1e6:.1f}"


def transformer_tables(config: str, rows: list[tuple[str, str, dict]], outputs: Path, cuda: bool) -> str:
    """Memory/speed table and error table for one config; every ratio is against ours in full mode."""
    ok = {(impl, label): r for impl, label, r in rows if "error" not in r}
    ref = ok.get(("ours", "full"))
    unit = "GB" if ref is None or ref["weights"]["all"] > 1e8 else "MB"

    def size(n: float) -> str:
        return _size(n, unit)

    lines, errs = [], []
    for impl, label, r in rows:
        if "error" in r:
            lines.append([label, impl, f"failed: {r['error'][:160]}"] + ["-"] * (8 if cuda else 7))
            continue
        steps = r["step_s"]
        median = statistics.median(steps)
        total, ref_total = r["weights"]["all"], ref["weights"]["all"] if ref else None
        weights = f"{size(total)} ({total / ref_total:.2f}x)" if ref_total else size(total)
        fp8 = r["weights"]["fp8"]
        fp8 = f"{size(fp8)} / {size(r['weights']['fp8_as_bf16'])}" if fp8 else "-"
        peak = r["peak"] - r["base_rss"]
        ref_peak = ref["peak"] - ref["base_rss"] if ref else None
        row = [label, impl, weights, fp8, size(r["load_peak"] - r["base_rss"]),
               f"{size(peak)} ({peak / ref_peak:.2f}x)" if ref_peak else size(peak),
               size(r["loaded_rss"] - r["base_rss"])]
        if cuda:
            row += [f"{r['vram_peak'] / 2**30:.2f} / {r['vram_reserved'] / 2**30:.2f}"]
        row += [f"{median:.4f} / {min(steps):.4f}",
                f"{median / statistics.median(ref['step_s']):.2f}" if ref else "-",
                f"{r['load_s']:.1f} / {r['enter_s']:.2f}"]
        lines.append(row)
        own = ok.get((impl, "full"))
        if own is not None and "fp32" not in label:
            got = torch.load(outputs / f"{config}-{impl}-{label}.pt")
            full = torch.load(outputs / f"{config}-{impl}-full.pt")
            errs.append([label, impl, f"{impl} full", rel_errors(got["forward"], full["forward"]),
                         rel_errors(got["latents"], full["latents"])])
    if ("diffusers", "full") in ok and ref:
        got, full = (torch.load(outputs / f"{config}-{impl}-full.pt") for impl in ("diffusers", "ours"))
        errs.append(["full", "diffusers", "ours full", rel_errors(got["forward"], full["forward"]),
                     rel_errors(got["latents"], full["latents"])])
    if ("ours", "full (fp32)") in ok and ref:
        got, full = (torch.load(outputs / f"{config}-ours-{label}.pt") for label in ("full", "full (fp32)"))
        errs.append(["full (bf16)", "ours", "ours full fp32 (bf16 rounding, for scale)",
                     rel_errors(got["forward"], full["forward"]), rel_errors(got["latents"], full["latents"])])
    headers = ["mode", "impl", f"weights {unit} (x ours full)", f"fp8 weights {unit}: stored / as bf16",
               f"load peak - base {unit}",
               f"load + steps peak - base {unit} (x ours full)", f"RSS after load - base {unit}"]
    headers += ["peak VRAM GiB (allocated / reserved)"] if cuda else []
    headers += ["s/step (median / min)", "s/step x ours full", "load s / enter mode s"]
    error_headers = ["mode", "impl", "against", "forward: max / mean rel err", "denoise: max / mean rel err"]
    return (benchlib.markdown_table(headers, lines) + "\n\n"
            + benchlib.markdown_table(error_headers, errs))


# -------------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="comma list of tiny, mid, 7b, 12b (default: tiny,mid on "
                                                        "cpu, 12b on cuda); 7b and 12b only on cuda")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--part", choices=("transformer", "vae"), default="transformer")
    parser.add_argument("--modes", default=",".join(MEMORY_MODES), help="comma list of memory modes")
    parser.add_argument("--impl", default="ours,diffusers", help="comma list of ours, diffusers")
    parser.add_argument("--size", default=None, help="video HxWxF in pixels and frames (default: per config)")
    parser.add_argument("--steps", type=int, default=None, help="denoise steps per mode (default: 4 cpu, 25 cuda)")
    parser.add_argument("--blocks-on-gpu", default="0", help="block_swap: comma list of resident block counts")
    parser.add_argument("--mid-layers", type=int, default=10, help="MMDiT layers of the mid config (10: 0.64 GB)")
    parser.add_argument("--fp32-reference", action=argparse.BooleanOptionalAction, default=None,
                        help="also run ours in full mode in fp32, for the scale of bf16 rounding (default: on cpu)")
    parser.add_argument("--tiles", default="none,512,256", help="--part vae: comma list of tile sizes in pixels")
    parser.add_argument("--vae-runs", type=int, default=2, help="--part vae: decodes per case (the first warms up)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in the children (default: 1 on cpu, steadier on a shared machine)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write checkpoints and outputs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child)
        if job["threads"]:
            torch.set_num_threads(job["threads"])
        print(json.dumps(transformer_child(job) if job["part"] == "transformer" else vae_child(job)))
        return

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch ({torch.__version__}) sees no CUDA device; run on a GPU "
                     f"machine, or try the script with --config tiny --device cpu.")
    configs = (args.config or ("12b" if cuda else "tiny,mid")).split(",")
    for name in configs:
        if name not in PRESETS or (name in ("7b", "12b") and not cuda):
            parser.error(f"--config {name}: expected tiny or mid on the CPU, or one of {sorted(PRESETS)} on CUDA.")
    modes = args.modes.split(",")
    impls = args.impl.split(",")
    for mode in modes:
        Placement(mode, CPU, CPU)  # an unknown name fails here, naming the choices
    steps = args.steps or (25 if cuda else 4)
    fp32_reference = args.fp32_reference if args.fp32_reference is not None else not cuda
    threads = args.threads or (None if cuda else 1)
    print(f"{benchlib.machine_description()} (children: {threads or 'default'} threads); device {device}, "
          f"{args.dtype}")  # the parent leaves CUDA alone: its context would take VRAM from the children

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        common = {"device": args.device, "dtype": args.dtype, "threads": threads, "mid_layers": args.mid_layers}
        if args.part == "vae":
            vae_main(args, configs, impls, root, common, cuda)
            return
        for name in configs:
            preset = PRESETS[name]
            size = args.size or preset.size
            folders = {}
            if preset.files and not cuda:
                start = time.perf_counter()
                folders = write_checkpoints(root, name, args.mid_layers)
                print(f"\n{name}: wrote bf16 checkpoints in {time.perf_counter() - start:.0f} s")
            jobs = []
            for mode in modes:
                swaps = [int(n) for n in args.blocks_on_gpu.split(",")] if mode == "block_swap" else [0]
                for blocks in swaps:
                    label = f"block_swap ({blocks} resident)" if mode == "block_swap" else mode
                    jobs += [(impl, label, {"mode": mode, "blocks_on_gpu": blocks, "dtype": args.dtype}) for impl in impls]
            if fp32_reference and "ours" in impls:
                jobs.append(("ours", "full (fp32)", {"mode": "full", "blocks_on_gpu": 0, "dtype": "fp32"}))
            rows = []
            for impl, label, spec in jobs:
                job = {**common, **spec, "part": "transformer", "config": name, "impl": impl, "size": size,
                       "text_len": preset.text_len, "steps": steps,
                       "folder": str(folders[impl]) if folders else None,
                       "out": str(root / f"{name}-{impl}-{label}.pt")}
                result = run_child(job)
                rows.append((impl, label, result))
                brief = result.get("error") or (f"{statistics.median(result['step_s']):.3f} s/step, host peak "
                                                f"{(result['peak'] - result['base_rss']) / 1e9:.2f} GB"
                                                + (f", VRAM {result['vram_peak'] / 2**30:.2f} GiB" if cuda else ""))
                print(f"  {name} {impl:9} {label:32} {brief}", flush=True)
            frames, h, w = parse_size(size)
            cfg = transformer_config(name, args.mid_layers)
            gpu = next((f" on {r['gpu']}" for _, _, r in rows if "gpu" in r), "")
            print(f"\n### {name}{gpu}: {cfg.num_layers} layers ({cfg.mmdit_layers} MMDiT), D={cfg.inner_dim}, "
                  f"text {cfg.text_embed_dim}; video {size} (latents [1, 16, {frames}, {h}, {w}]), CFG batch 2, "
                  f"text {preset.text_len} tokens, {steps} steps, guidance {GUIDANCE}\n")
            print(transformer_tables(name, rows, root, cuda))


def vae_main(args, configs: list[str], impls: list[str], root: Path, common: dict, cuda: bool) -> None:
    """Decode peak VRAM and time per tile size; outputs compared (every 4th frame) with ours untiled."""
    rows, gpu = [], None
    tiles = [None if t == "none" else int(t) for t in args.tiles.split(",")]
    for name in configs:
        vae = "tiny" if name == "tiny" else "v5.1"
        size = args.size or PRESETS[name].size
        reference = root / f"vae-{name}-ours-None.pt"
        for tile in tiles:
            for impl in impls:
                out = root / f"vae-{name}-{impl}-{tile}.pt"
                r = run_child({**common, "part": "vae", "vae": vae, "impl": impl, "tile": tile, "size": size,
                               "runs": args.vae_runs, "out": str(out)})
                if "error" in r:
                    rows.append([vae, size, tile or "-", impl, f"failed: {r['error'][:160]}", "-", "-"])
                    continue
                vram = f"{r['vram_peak'] / 2**30:.2f} / {r['vram_reserved'] / 2**30:.2f}" if cuda else "-"
                diff = (f"{(torch.load(out) - torch.load(reference)).abs().max().item():.3g}"
                        if reference.exists() else "-")
                rows.append([vae, size, tile or "-", impl, vram, " / ".join(f"{t:.2f}" for t in r["times"]), diff])
                print(f"  {vae} {size} tile {tile} {impl}: {vram} GiB, {r['times']} s", flush=True)
                gpu = r.get("gpu", gpu)
    print(f"\n{f'On {gpu}, ' if gpu else ''}{args.dtype}, random weights; the first decode includes warm-up.\n")
    print(benchlib.markdown_table(["VAE", "video HxWxF", "tile px", "impl", "peak VRAM GiB (allocated / reserved)",
                                   "decode s per run", "max abs diff vs ours untiled"], rows))


if __name__ == "__main__":
    main()
