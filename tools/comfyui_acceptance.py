"""The pack in a real ComfyUI server with its real front end, as users run it (CI runs this after the tests).

    python tools/comfyui_acceptance.py --out DIR [--harness ../shared/comfyui-harness] [--comfyui .comfyui/ComfyUI]

It writes into DIR tiny demo model folders under the names the shipped workflows ask for, a demo LoRA, the input
image and videos the workflows load, and an extra_model_paths.yaml; then it runs the harness (run_pack.sh) twice:
1. every shipped workflow is dropped onto the canvas with --strict-widgets (no missing node, no combo value outside
   its list, no widget count mismatch);
2. reduced copies (48x32 pixels, 5 frames, 2 steps) of the t2v, i2v, control, camera, lora, native, v5_t2v and
   v5_i2v workflows are queued and must finish without an error.
Exit status 0 only if both runs pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUEUED = ("t2v", "i2v", "control", "camera", "lora", "native", "v5_t2v", "v5_i2v")
SMALL = {"width": 48, "height": 32, "frames": 5, "steps": 2}
# Widget positions of the sizes, per node type: (width, height, frames, steps) indexes; None where absent.
_SIZE_WIDGETS = {
    "EasyAnimateSampler": (0, 1, 2, 3),
    "EasyAnimateConditioning": (0, 1, 2, None),
    "EasyAnimateTrajectory": (1, 2, 3, None),
    "EasyAnimateScheduler": (None, None, None, 0),
    "EasyAnimateCameraPreset": (None, None, 1, None),
}


def _variant(model_name: str) -> str:
    for suffix, variant in (("-Control-Camera", "camera"), ("-Control", "control"), ("-InP", "inp")):
        if model_name.endswith(suffix):
            return variant
    return "t2v"


def _version(model_name: str) -> str:
    """The demo family of a model name: EasyAnimateV5-... folders are V5 (Bert + mT5, DDIM), the others V5.1."""
    return "5" if model_name.startswith("EasyAnimateV5-") else "5.1"


def write_assets(out: Path, workflows: list[Path]) -> Path:
    """Demo models, LoRA, inputs and extra_model_paths.yaml under ``out``; returns the yaml's path."""
    import torch

    from easyanimate_core.demo import write_demo_model
    from easyanimate_core.loading import load_transformer
    from easyanimate_core.lora import LoraLayer, save_lora
    from easyanimate_core.video import write_mp4, write_png

    models, loras, inputs = out / "models" / "EasyAnimate", out / "models" / "loras", out / "input"
    for folder in (models, loras, inputs):
        folder.mkdir(parents=True, exist_ok=True)
    names = {node["widgets_values"][0] for path in workflows
             for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]
             if node["type"] in ("EasyAnimateModelLoader", "EasyAnimateTrainLoRA")}
    for name in sorted(names):
        if not (models / name / "transformer" / "config.json").is_file():
            write_demo_model(models / name, variant=_variant(name), version=_version(name))
    transformer = load_transformer(models / "EasyAnimateV5.1-7b-zh", dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    layers = {}
    for name in ("transformer_blocks.0.attn1.to_q", "proj_out"):
        linear = transformer.get_submodule(name)
        layers[name] = LoraLayer(torch.randn(2, linear.in_features, generator=gen),
                                 torch.randn(linear.out_features, 2, generator=gen) * 0.1, 2.0)
    save_lora(loras / "easyanimate_style.safetensors", layers)
    frames = torch.rand(9, 64, 96, 3, generator=gen)
    write_png(inputs / "example.png", frames[0])
    for name in ("input_video.mp4", "control_video.mp4"):
        write_mp4(inputs / name, frames, fps=8)
    paths = out / "extra_model_paths.yaml"
    paths.write_text(f"easyanimate_acceptance:\n  base_path: {out}\n  EasyAnimate: models/EasyAnimate\n"
                     f"  loras: models/loras\n", encoding="utf-8")
    return paths


def reduced(workflow: dict) -> dict:
    """A copy of ``workflow`` at :data:`SMALL` size; model, LoRA and input names stay."""
    small = json.loads(json.dumps(workflow))
    values = (SMALL["width"], SMALL["height"], SMALL["frames"], SMALL["steps"])
    for node in small["nodes"]:
        for index, value in zip(_SIZE_WIDGETS.get(node["type"], ()), values):
            if index is not None:
                node["widgets_values"][index] = value
    return small


def run_harness(harness: Path, comfyui: Path, out: Path, paths: Path, workflows: list[Path], *, queue: bool) -> int:
    link_root = out / "pack"
    link_root.mkdir(exist_ok=True)
    pack = link_root / "ComfyUI-EasyAnimate"  # the folder name users clone into
    if not pack.is_symlink():
        pack.symlink_to(ROOT, target_is_directory=True)
    command = [str(harness / "run_pack.sh"), "--strict-widgets", "--out", str(out / ("queue" if queue else "load")),
               "--input-dir", str(out / "input"), "--server-arg=--extra-model-paths-config",
               f"--server-arg={paths}"]
    if queue:
        command += ["--queue", "--exec-timeout", "300"]
    command += [str(pack), *map(str, workflows)]
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, env=dict(os.environ, COMFYUI_DIR=str(comfyui))).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--harness", type=Path, default=ROOT.parent / "shared" / "comfyui-harness")
    parser.add_argument("--comfyui", type=Path, default=ROOT / ".comfyui" / "ComfyUI")
    args = parser.parse_args()
    out = args.out.resolve()
    shipped = sorted((ROOT / "workflows").glob("*.json"))
    paths = write_assets(out, shipped)
    small_dir = out / "reduced"
    small_dir.mkdir(exist_ok=True)
    small = []
    for mode in QUEUED:
        path = small_dir / f"easyanimate_{mode}_small.json"
        workflow = json.loads((ROOT / "workflows" / f"easyanimate_{mode}.json").read_text(encoding="utf-8"))
        path.write_text(json.dumps(reduced(workflow), ensure_ascii=False, indent=1), encoding="utf-8")
        small.append(path)
    loaded = run_harness(args.harness, args.comfyui.resolve(), out, paths, shipped, queue=False)
    queued = run_harness(args.harness, args.comfyui.resolve(), out, paths, small, queue=True)
    print(f"shipped workflows load: {'PASS' if loaded == 0 else 'FAIL'}; reduced copies run: "
          f"{'PASS' if queued == 0 else 'FAIL'}")
    return 0 if loaded == queued == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
