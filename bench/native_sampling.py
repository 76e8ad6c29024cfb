"""ComfyUI's own sampling on the native EasyAnimate MODEL against EasyAnimate Sampler, same weights, same run (CPU).

Both run inside the real ComfyUI modules (tests/comfyui_env.py) on one model folder: a demo folder whose
transformer is replaced by a mid-size random one (4 MMDiT layers at D=1024, text 3584, InP channels). The prompts
are random [1, 256, 3584] states (the demo text encoder is tiny), so only the samplers differ:
- "ours": EasyAnimate Sampler (the reference loop);
- "comfy": EasyAnimate Conditioning + SamplerCustomAdvanced (CFGGuider, euler) on EasyAnimate Scheduler's sigmas.
Runs alternate, so machine noise hits both alike; the table gives the median seconds per step and the largest
difference of the final latents.

    python bench/native_sampling.py                 # 256x448, 13 frames, 6 steps, CFG 6, fp32
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import benchlib  # puts the repo root on sys.path
import torch
from safetensors.torch import save_file

from easyanimate_core import EasyAnimateTransformer, TransformerConfig
from easyanimate_core.demo import write_demo_model

sys.path.insert(0, str(benchlib.REPO_ROOT / "tests"))
from comfyui_env import import_comfyui  # noqa: E402
from conftest import load_pack  # noqa: E402


def write_model(root: Path, layers: int) -> Path:
    folder = write_demo_model(root / "mid-inp", variant="inp")
    config = TransformerConfig(num_attention_heads=16, attention_head_dim=64, num_layers=layers, mmdit_layers=layers,
                               text_embed_dim=3584, add_norm_text_encoder=True, in_channels=33)
    with torch.device("meta"):
        model = EasyAnimateTransformer(config, dtype=torch.float32)
    model = benchlib.random_fill_(model.to_empty(device="cpu"), seed=0)
    shutil.rmtree(folder / "transformer")
    (folder / "transformer").mkdir()
    (folder / "transformer" / "config.json").write_text(json.dumps(
        {"_class_name": "EasyAnimateTransformer3DModel", **dataclasses.asdict(config)}))
    save_file(model.state_dict(), folder / "transformer" / "diffusion_pytorch_model.safetensors")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--size", default="448x256x13", help="WxHxF")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    width, height, frames = (int(v) for v in args.size.split("x"))
    import_comfyui()
    import comfy_extras.nodes_custom_sampler as custom
    import folder_paths

    pack = load_pack()
    nodes = pack.NODE_CLASS_MAPPINGS

    def run(node, **inputs):
        instance = node()
        return getattr(instance, node.FUNCTION)(**inputs)

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model(Path(tmp), args.layers)
        folder_paths.folder_names_and_paths["EasyAnimate"] = ([str(folder.parent)], set())
        model, _, vae, info = run(nodes["EasyAnimateModelLoader"], model=folder.name, precision="fp32",
                                  memory_mode="full", blocks_on_gpu=-1, weight_dtype="default")
        gen = torch.Generator().manual_seed(0)
        positive = [[torch.randn(1, 256, 3584, generator=gen), {}]]
        negative = [[torch.randn(1, 256, 3584, generator=gen), {}]]
        size = dict(width=width, height=height, frames=frames)
        cond_pos, cond_neg, latent = run(nodes["EasyAnimateConditioning"], model=model, positive=positive,
                                         negative=negative, vae=vae, seed=1, **size)
        (sigmas,) = run(nodes["EasyAnimateScheduler"], model=model, steps=args.steps, denoise=1.0)
        (guider,) = run(custom.CFGGuider, model=model, positive=cond_pos, negative=cond_neg, cfg=6.0)
        (sampler,) = run(custom.KSamplerSelect, sampler_name="euler")
        (noise,) = run(custom.RandomNoise, noise_seed=1)

        def ours():
            return run(nodes["EasyAnimateSampler"], model=model, vae=vae, positive=positive, negative=negative,
                       steps=args.steps, guidance=6.0, seed=1, denoise_strength=1.0, **size)[0]["samples"]

        def comfy():
            return run(custom.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                       latent_image=latent)[0]["samples"]

        outputs = {"ours": ours(), "comfy": comfy()}  # warm-up, and the latents compared
        times = benchlib.interleaved_times({"ours": ours, "comfy": comfy}, runs=args.runs, warmup=0)
    diff = (outputs["ours"] - outputs["comfy"]).abs().max().item()
    scale = outputs["ours"].abs().max().item()
    print(f"{info}; {width}x{height}x{frames}, {args.steps} steps, CFG 6 (batch 2), fp32; "
          f"{benchlib.machine_description()}")
    print(benchlib.markdown_table(
        ["path", "s/step (median)", "runs"],
        [[name, f"{statistics.median(t) / args.steps:.3f}", len(t)] for name, t in times.items()]))
    print(f"comfy / ours time: {benchlib.paired_ratio(times, 'comfy', 'ours'):.3f}; max |diff| of the final latents "
          f"{diff:.2e} (largest |latent| {scale:.2f})")


if __name__ == "__main__":
    main()
