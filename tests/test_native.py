"""EasyAnimate as a native ComfyUI model, checked with ComfyUI's own nodes (real modules, tests/comfyui_env.py):
SamplerCustomAdvanced + EasyAnimate Scheduler + euler equals EasyAnimate Sampler in every mode; KSampler,
LoraLoaderModelOnly, TorchCompileModel, EasyCache, LazyCache and ModelSamplingSD3 work on it; "Unload models"
unloads it; the memory modes become ComfyUI weight budgets and fp8 storage."""

from __future__ import annotations

import pytest
import torch
from conftest import EXACT, load_pack, run_node as _run

load_pack()
SIZE = dict(width=48, height=32, frames=5)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from easyanimate_core.demo import write_demo_model

    root = tmp_path_factory.mktemp("models")
    for variant in ("t2v", "inp", "control", "camera"):
        write_demo_model(root / f"demo-{variant}", variant=variant)
    return root


def _load(name, memory_mode="model_cpu_offload", blocks_on_gpu=-1, weight_dtype="default", precision="fp32"):
    return _run("EasyAnimateModelLoader", model=name, precision=precision, memory_mode=memory_mode,
                blocks_on_gpu=blocks_on_gpu, weight_dtype=weight_dtype)


def _prompts(text_encoder):
    return _run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="blurry")


def _custom_advanced(model, positive, negative, latent, *, steps, seed, cfg=6.0, denoise=1.0, sampler="euler"):
    import comfy_extras.nodes_custom_sampler as custom

    (sigmas,) = _run("EasyAnimateScheduler", model=model, steps=steps, denoise=denoise)
    (guider,) = _run(custom.CFGGuider, model=model, positive=positive, negative=negative, cfg=cfg)
    (chosen,) = _run(custom.KSamplerSelect, sampler_name=sampler)
    (noise,) = _run(custom.RandomNoise, noise_seed=seed)
    out, _ = _run(custom.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=chosen, sigmas=sigmas,
                  latent_image=latent)
    return out["samples"]


def _mode_inputs(mode):
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(1, 32, 48, 3, generator=gen)
    video = torch.rand(5, 32, 48, 3, generator=gen)
    if mode == "i2v":
        return "demo-inp", {"start_image": image, "end_image": torch.rand(1, 32, 48, 3, generator=gen)}, 1.0
    if mode == "v2v":
        return "demo-inp", {"input_video": video}, 0.6
    if mode == "control":
        return "demo-control", {"control_video": video, "reference_image": image}, 1.0
    if mode == "camera":
        (pan,) = _run("EasyAnimateCameraPreset", preset="Pan Left", frames=5, speed=1.0, fx=0.53, fy=0.95)
        return "demo-camera", {"camera": pan, "reference_image": image}, 1.0
    return "demo-t2v", {}, 1.0


@pytest.mark.parametrize("mode", ["t2v", "i2v", "v2v", "control", "camera"])
def test_sampler_custom_advanced_with_the_easyanimate_scheduler_equals_our_sampler(comfyui, mode):
    name, inputs, strength = _mode_inputs(mode)
    model, text_encoder, vae, _ = _load(name)
    positive, negative = _prompts(text_encoder)
    (ours,) = _run("EasyAnimateSampler", model=model, vae=vae, positive=positive, negative=negative, steps=4,
                   guidance=6.0, seed=7, denoise_strength=strength, **EXACT, **SIZE, **inputs)
    cond_positive, cond_negative, latent = _run("EasyAnimateConditioning", model=model, positive=positive,
                                                negative=negative, vae=vae, seed=7, **SIZE, **inputs)
    theirs = _custom_advanced(model, cond_positive, cond_negative, latent, steps=4, seed=7, denoise=strength)
    expected = ours["samples"]
    assert theirs.shape == expected.shape == (1, 16, 2, 4, 6)
    error = ((theirs - expected).abs().max() / expected.abs().max()).item()
    assert error < 1e-5, error


def test_ksampler_samples_an_easyanimate_model_with_comfyui_schedulers(comfyui):
    import nodes

    model, text_encoder, vae, _ = _load("demo-inp")
    positive, negative = _prompts(text_encoder)
    positive, negative, latent = _run("EasyAnimateConditioning", model=model, positive=positive, negative=negative,
                                      vae=vae, seed=1, start_image=torch.rand(1, 32, 48, 3), **SIZE)
    results = []
    for sampler, scheduler in (("euler", "simple"), ("dpmpp_2m", "beta")):
        (out,) = _run(nodes.KSampler, model=model, seed=1, steps=3, cfg=5.0, sampler_name=sampler,
                      scheduler=scheduler, positive=positive, negative=negative, latent_image=latent, denoise=1.0)
        assert out["samples"].shape == (1, 16, 2, 4, 6) and torch.isfinite(out["samples"]).all()
        results.append(out["samples"])
    assert not torch.equal(*results)
    (frames,) = _run("EasyAnimateDecode", vae=vae, samples={"samples": results[0]}, tile_size=0)
    assert frames.shape == (5, 32, 48, 3)


def test_variant_channels_are_checked_where_the_model_meets_them(comfyui):
    import nodes

    model, text_encoder, vae, _ = _load("demo-control")
    positive, negative = _prompts(text_encoder)
    (pan,) = _run("EasyAnimateCameraPreset", preset="Pan Left", frames=5, speed=1.0, fx=0.53, fy=0.95)
    with pytest.raises(ValueError, match="camera needs a Control-Camera model"):
        _run("EasyAnimateConditioning", model=model, positive=positive, negative=negative, vae=vae, seed=1,
             camera=pan, **SIZE)
    empty = {"samples": torch.zeros(1, 16, 2, 4, 6)}
    with pytest.raises(ValueError, match="needs control channels: connect EasyAnimate Conditioning"):
        _run(nodes.KSampler, model=model, seed=1, steps=1, cfg=5.0, sampler_name="euler", scheduler="simple",
             positive=positive, negative=negative, latent_image=empty, denoise=1.0)
    with pytest.raises(ValueError, match=r"\(1, 4, 1, 8, 8\): expected EasyAnimate video latents"):
        _run(nodes.KSampler, model=model, seed=1, steps=1, cfg=5.0, sampler_name="euler", scheduler="simple",
             positive=positive, negative=negative, latent_image={"samples": torch.ones(1, 4, 8, 8)}, denoise=1.0)
    t2v, _, _, _ = _load("demo-t2v")
    with pytest.raises(ValueError, match="i2v needs an InP model"):
        _run("EasyAnimateConditioning", model=t2v, positive=positive, negative=negative, vae=vae, seed=1,
             start_image=torch.rand(1, 32, 48, 3), **SIZE)
    with pytest.raises(ValueError, match="EasyAnimate Sampler needs an EasyAnimate model"):
        _run("EasyAnimateSampler", model=object(), vae=vae, positive=positive, negative=negative, steps=1,
             guidance=1.0, seed=1, denoise_strength=1.0, **EXACT, **SIZE)


def _official_lora(transformer, rank=2, seed=0):
    from easyanimate_core.lora import LoraLayer

    gen = torch.Generator().manual_seed(seed)
    names = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn2.to_out.0", "proj_out"]
    layers = {}
    for name in names:
        linear = transformer.get_submodule(name)
        layers[name] = LoraLayer(torch.randn(rank, linear.in_features, generator=gen),
                                 torch.randn(linear.out_features, rank, generator=gen) * 0.1, float(rank))
    return layers


def test_lora_loader_model_only_reads_official_and_peft_loras_like_our_loader(comfyui):
    import nodes
    from safetensors.torch import save_file

    from easyanimate_core.loading import convert_transformer_key
    from easyanimate_core.lora import save_lora

    model, text_encoder, vae, _ = _load("demo-t2v")
    layers = _official_lora(model.model.diffusion_model)
    save_lora(comfyui["loras"] / "official.safetensors", layers)  # also our trainer's format
    peft = {}
    for name, layer in layers.items():
        stem = "transformer." + convert_transformer_key(name + ".weight", "original", "diffusers")[: -len(".weight")]
        peft[f"{stem}.lora_A.weight"], peft[f"{stem}.lora_B.weight"] = layer.down, layer.up * layer.scale
    save_file(peft, str(comfyui["loras"] / "peft.safetensors"))

    (ours,) = _run("EasyAnimateLoraLoader", model=model, lora_name="official.safetensors", strength=0.7)
    (core,) = _run(nodes.LoraLoaderModelOnly, model=model, lora_name="official.safetensors", strength_model=0.7)
    (core_peft,) = _run(nodes.LoraLoaderModelOnly, model=model, lora_name="peft.safetensors", strength_model=0.7)
    assert set(ours.patches) == set(core.patches) == set(core_peft.patches) == {
        f"diffusion_model.{name}.weight" for name in layers}
    positive, negative = _prompts(text_encoder)
    latent = {"samples": torch.zeros(1, 16, 2, 4, 6)}
    outputs = [_custom_advanced(m, positive, negative, latent, steps=2, seed=3) for m in (ours, core, core_peft, model)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(outputs[2], outputs[0], rtol=0, atol=1e-5)
    assert (outputs[3] - outputs[0]).abs().max() > 1e-3  # the LoRA changed the video


def test_model_sampling_sd3_changes_the_shift_the_scheduler_uses(comfyui):
    import comfy_extras.nodes_model_advanced as advanced

    model, text_encoder, _, _ = _load("demo-t2v")
    (shifted,) = _run(advanced.ModelSamplingSD3, model=model, shift=3.0)
    (released,) = _run("EasyAnimateScheduler", model=model, steps=4, denoise=1.0)
    (three,) = _run("EasyAnimateScheduler", model=shifted, steps=4, denoise=1.0)
    base = torch.linspace(1.0, 1e-3, 4, dtype=torch.float64)
    torch.testing.assert_close(three[:-1].double(), 3 * base / (1 + 2 * base), rtol=0, atol=1e-6)
    assert not torch.allclose(released, three)
    positive, negative = _prompts(text_encoder)
    out = _custom_advanced(shifted, positive, negative, {"samples": torch.zeros(1, 16, 2, 4, 6)}, steps=4, seed=1)
    assert torch.isfinite(out).all()


def _count_forwards(model):
    """A clone of ``model`` that counts transformer evaluations (a ComfyUI diffusion-model wrapper)."""
    import comfy.patcher_extension as extension

    calls = []

    def counter(executor, *args, **kwargs):
        calls.append(args[0].shape[0])
        return executor(*args, **kwargs)

    counted = model.clone()
    counted.add_wrapper_with_key(extension.WrappersMP.DIFFUSION_MODEL, "test-count", counter)
    return counted, calls


@pytest.mark.parametrize("node_name", ["EasyCacheNode", "LazyCacheNode"])
def test_easycache_and_lazycache_skip_steps_of_an_easyanimate_model(comfyui, node_name):
    import comfy_extras.nodes_easycache as easycache

    model, text_encoder, _, _ = _load("demo-t2v")
    positive, negative = _prompts(text_encoder)
    latent = {"samples": torch.zeros(1, 16, 2, 4, 6)}
    plain, plain_calls = _count_forwards(model)
    expected = _custom_advanced(plain, positive, negative, latent, steps=12, seed=2)
    (cached,) = _run(getattr(easycache, node_name), model=model, reuse_threshold=3.0, start_percent=0.1,
                     end_percent=0.95, verbose=False)
    cached, cached_calls = _count_forwards(cached)
    got = _custom_advanced(cached, positive, negative, latent, steps=12, seed=2)
    assert len(plain_calls) == 12 and 0 < len(cached_calls) < 12
    assert got.shape == expected.shape and torch.isfinite(got).all() and not torch.equal(got, expected)


def test_torch_compile_model_runs_an_easyanimate_model(comfyui):
    import comfy_extras.nodes_torch_compile as compile_nodes

    model, text_encoder, _, _ = _load("demo-t2v")
    positive, negative = _prompts(text_encoder)
    latent = {"samples": torch.zeros(1, 16, 2, 4, 6)}
    expected = _custom_advanced(model, positive, negative, latent, steps=2, seed=4)
    (compiled,) = _run(compile_nodes.TorchCompileModel, model=model, backend="inductor")
    got = _custom_advanced(compiled, positive, negative, latent, steps=2, seed=4)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_unload_models_takes_an_easyanimate_model_off_the_device(comfyui):
    import comfy.model_management as mm

    model, text_encoder, vae, _ = _load("demo-t2v")
    positive, negative = _prompts(text_encoder)
    _run("EasyAnimateSampler", model=model, vae=vae, positive=positive, negative=negative, steps=1, guidance=6.0,
         seed=1, denoise_strength=1.0, **EXACT, **SIZE)
    patchers = [loaded.model for loaded in mm.current_loaded_models]
    assert any(patcher.model is model.model for patcher in patchers) and model.loaded_size() > 0
    mm.unload_all_models()  # what "Unload models" and POST /free do
    assert mm.current_loaded_models == [] and model.loaded_size() == 0


@pytest.mark.parametrize("memory_mode, blocks, streamed", [("sequential_cpu_offload", -1, "all"),
                                                           ("block_swap", 1, "some"),
                                                           ("model_cpu_offload", -1, "none")])
def test_memory_modes_become_comfyui_weight_budgets(comfyui, memory_mode, blocks, streamed):
    model, text_encoder, vae, _ = _load("demo-t2v", memory_mode=memory_mode, blocks_on_gpu=blocks)
    positive, negative = _prompts(text_encoder)
    args = dict(vae=vae, positive=positive, negative=negative, steps=2, guidance=6.0, seed=1, denoise_strength=1.0,
                **EXACT)
    (out,) = _run("EasyAnimateSampler", model=model, **args, **SIZE)
    linears = [m for m in model.model.diffusion_model.modules() if isinstance(m, torch.nn.Linear)]
    cast = sum(bool(getattr(m, "comfy_cast_weights", False)) for m in linears)  # streamed layer by layer
    assert {"all": cast == len(linears), "some": 0 < cast < len(linears), "none": cast == 0}[streamed], cast
    reference, te, reference_vae, _ = _load("demo-t2v", memory_mode="full")
    (expected,) = _run("EasyAnimateSampler", model=reference, **dict(args, vae=reference_vae), **SIZE)
    torch.testing.assert_close(out["samples"], expected["samples"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("weight_dtype, memory_mode", [("fp8_e4m3fn", "model_cpu_offload"),
                                                        ("default", "model_cpu_offload_and_fp8_cast"),
                                                        ("fp8_e5m2", "model_cpu_offload")])
def test_fp8_weight_dtypes_store_the_large_linears_low_and_the_rest_high(comfyui, weight_dtype, memory_mode):
    model, text_encoder, vae, info = _load("demo-t2v", memory_mode=memory_mode, weight_dtype=weight_dtype,
                                           precision="bf16")
    transformer = model.model.diffusion_model
    stored = torch.float8_e5m2 if weight_dtype == "fp8_e5m2" else torch.float8_e4m3fn
    assert transformer.transformer_blocks[0].attn1.to_q.weight.dtype == stored
    assert transformer.transformer_blocks[0].attn1.to_q.bias.dtype == torch.bfloat16
    for kept in (transformer.proj_out, transformer.transformer_blocks[0].norm1.linear, transformer.proj):
        assert kept.weight.dtype == torch.bfloat16
    positive, negative = _prompts(text_encoder)
    args = dict(vae=vae, positive=positive, negative=negative, steps=2, guidance=6.0, seed=1, denoise_strength=1.0,
                **EXACT)
    (out,) = _run("EasyAnimateSampler", model=model, **args, **SIZE)
    reference, _, _, _ = _load("demo-t2v", precision="bf16")
    (expected,) = _run("EasyAnimateSampler", model=reference, **args, **SIZE)
    error = ((out["samples"] - expected["samples"]).abs().max() / expected["samples"].abs().max()).item()
    assert 0 < error < 0.25, error
