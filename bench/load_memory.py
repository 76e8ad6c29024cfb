"""Peak host memory of loading a >= 1 GB transformer checkpoint: our loader, the native ComfyUI loader (our loader
building comfy.ops layers into a ModelPatcher, with the real ComfyUI imported) and diffusers' from_pretrained.

The parent process writes random checkpoints (original layout for ours, diffusers layout for diffusers; bf16 and
fp32) to a temporary folder; every load then runs in a fresh subprocess, so neither the writer's memory nor another
load's leftovers count. Each child records its RSS after imports, resets the high-water mark
(``/proc/self/clear_refs``), loads, and reports VmHWM from ``/proc/self/status``; the parent samples the child's
anonymous and file-backed RSS from outside. Each case runs ``--repeats`` times, because how much freed memory
glibc's heap keeps differs from run to run; the table shows the worst run.

    python bench/load_memory.py                 # 18 MMDiT layers at D=1024: 1.15 GB in bf16
    python bench/load_memory.py --layers 4      # quicker, smaller
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib  # puts the repo root on sys.path
import torch
from safetensors.torch import save_file

from easyanimate_core import EasyAnimateTransformer, TransformerConfig, convert_transformer_state_dict

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
WEIGHTS = "diffusion_pytorch_model.safetensors"
# (file dtype, load dtype)
CASES = (("bf16", "bf16"), ("bf16", "fp32"), ("fp32", "bf16"))


def mid_config(layers: int) -> TransformerConfig:
    return TransformerConfig(num_attention_heads=16, attention_head_dim=64, num_layers=layers, mmdit_layers=layers,
                             text_embed_dim=3584, add_norm_text_encoder=True, in_channels=33)


def write_checkpoints(root: Path, config: TransformerConfig) -> int:
    """``root/{original,diffusers}-{bf16,fp32}/`` with config.json and one safetensors file; returns the bf16 bytes."""
    with torch.device("meta"):
        model = EasyAnimateTransformer(config, dtype=torch.float32)
    model = benchlib.random_fill_(model.to_empty(device="cpu"), seed=0)
    original_config = {"_class_name": "EasyAnimateTransformer3DModel", **dataclasses.asdict(config)}
    diffusers_config = {"_class_name": "EasyAnimateTransformer3DModel",
                        **benchlib.diffusers_transformer_kwargs(config)}
    state = model.state_dict()
    for name, dtype in DTYPES.items():
        typed = {k: v.to(dtype).contiguous() for k, v in state.items()}
        for layout, cfg in (("original", original_config), ("diffusers", diffusers_config)):
            folder = root / f"{layout}-{name}"
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(json.dumps(cfg, indent=2))
            save_file(convert_transformer_state_dict(typed, "original", layout), folder / WEIGHTS)
        del typed
    return sum(v.numel() for v in state.values()) * 2


def _status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def measure(loader: str, folder: Path, dtype_name: str) -> dict:
    """Runs in the child: load once and report memory in bytes."""
    dtype = DTYPES[dtype_name]
    if loader == "ours":
        from easyanimate_core import load_transformer

        def load():
            return load_transformer(folder, dtype=dtype, device="cpu")
    elif loader == "native":
        sys.path.insert(0, str(benchlib.REPO_ROOT / "tests"))
        from comfyui_env import import_comfyui
        from conftest import load_pack

        import_comfyui()
        native = __import__(f"{load_pack().__name__}.nodes._native", fromlist=["load_model"])

        def load():
            return native.load_model(folder, dtype, "default", "model_cpu_offload", -1, 0.7125).model
    else:
        from diffusers import EasyAnimateTransformer3DModel
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()

        def load():
            return EasyAnimateTransformer3DModel.from_pretrained(folder, torch_dtype=dtype)
    baseline = _status()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    start = time.perf_counter()
    model = load()
    seconds = time.perf_counter() - start
    peak = _status()["VmHWM"]
    tensors = [*model.parameters(), *model.buffers()]
    with torch.inference_mode():
        for t in tensors:  # a lazily mapped weight becomes resident when a forward first reads it
            t.view(-1)[:: max(1, 4096 // t.element_size())].sum()
    return {"baseline": baseline, "peak": peak, "touched_peak": _status()["VmHWM"], "seconds": seconds,
            "loaded": sum(t.numel() * t.element_size() for t in tensors)}


def run_child(loader: str, folder: Path, dtype_name: str, poll_s: float = 0.002) -> dict:
    """Run :func:`measure` in a fresh interpreter; also sample its RssAnon and RssFile peaks from outside."""
    child = subprocess.Popen([sys.executable, __file__, "--child", loader, str(folder), dtype_name],
                             stdout=subprocess.PIPE, text=True)
    status = Path(f"/proc/{child.pid}/status")
    peaks = {"RssAnon": 0, "RssFile": 0}
    while child.poll() is None:
        try:
            lines = status.read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            break
        for line in lines:
            key, _, value = line.partition(":")
            if key in peaks and value.strip():
                peaks[key] = max(peaks[key], int(value.split()[0]) * 1024)
        time.sleep(poll_s)
    stdout, _ = child.communicate()
    if child.returncode:
        raise RuntimeError(f"{loader} loading {folder} as {dtype_name} failed (exit code {child.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["sampled_peaks"] = peaks
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=18, help="MMDiT layers at D=1024 (18 -> 1.15 GB in bf16)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh loads per case (glibc's heap varies per run)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the checkpoints (default: a temp dir)")
    parser.add_argument("--child", nargs=3, metavar=("LOADER", "FOLDER", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        loader, folder, dtype_name = args.child
        print(json.dumps(measure(loader, Path(folder), dtype_name)))
        return

    config = mid_config(args.layers)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        bf16_bytes = write_checkpoints(root, config)
        print(f"Wrote {config.num_layers}-layer D={config.inner_dim} checkpoints ({bf16_bytes / 1e9:.2f} GB bf16, "
              f"{2 * bf16_bytes / 1e9:.2f} GB fp32) in {time.perf_counter() - start:.0f} s; "
              f"{benchlib.machine_description()}")
        rows = []
        for file_dtype, load_dtype in CASES:
            for loader, layout in (("ours", "original"), ("native", "original"), ("diffusers", "diffusers")):
                runs = [_summary(run_child(loader, root / f"{layout}-{file_dtype}", load_dtype))
                        for _ in range(args.repeats)]
                worst = max(runs, key=lambda r: r["ratio"])
                rows.append([f"{file_dtype} file -> {load_dtype}", loader, f"{worst['loaded'] / 1e9:.3f}",
                             f"{worst['grown'] / 1e9:.3f}", f"**{worst['ratio']:.3f}**",
                             f"{min(r['ratio'] for r in runs):.3f}", f"{worst['touched']:.3f}",
                             f"{worst['anon']:.2f} / {worst['file']:.2f}",
                             f"{statistics.median(r['seconds'] for r in runs):.1f}"])
    print()
    print(benchlib.markdown_table(
        ["case", "loader", "loaded GB", "peak - baseline GB (worst run)", "ratio (worst run)", "ratio (best run)",
         "ratio after reading every weight", "sampled peak anon / file growth (x loaded)", "load s (median)"],
        rows))


def _summary(r: dict) -> dict:
    """Growth over the post-import baseline, as bytes and as multiples of the loaded weight bytes."""
    base, loaded = r["baseline"], r["loaded"]
    grown = r["peak"] - base["VmRSS"]
    return {"loaded": loaded, "grown": grown, "ratio": grown / loaded, "seconds": r["seconds"],
            "touched": (r["touched_peak"] - base["VmRSS"]) / loaded,
            "anon": (r["sampled_peaks"]["RssAnon"] - base["RssAnon"]) / loaded,
            "file": (r["sampled_peaks"]["RssFile"] - base["RssFile"]) / loaded}

if __name__ == "__main__":
    main()
