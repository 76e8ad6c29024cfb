"""EasyAnimate V5 models (Bert + mT5, DDPM-family scheduler config) in ComfyUI, with the real ComfyUI modules
(tests/comfyui_env.py) on tiny V5 demo folders: the loader node, Text Encode carrying the mT5 states, EasyAnimate
Sampler equal to the core's sample_latents, ComfyUI's own samplers through the model sampling of the folder's
scheduler config, and EasyAnimate Conditioning for V5 InP and Control."""

from __future__ import annotations

import pytest
import torch
from conftest import EXACT, load_demo as _load, load_pack, run_node as _run

load_pack()
SIZE = dict(width=48, height=32, frames=5)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from easyanimate_core.demo import write_demo_model

    root = tmp_path_factory.mktemp("models")
    for variant in ("t2v", "inp", "control"):
        write_demo_model(root / f"v5-{variant}", variant=variant, version="5")
    write_demo_model(root / "v51-t2v", variant="t2v")
    return root


def _prompts(text_encoder):
    return _run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="blurry")


def _sample(model, vae, positive, negative, steps=4, seed=7, **options):
    (latent,) = _run("EasyAnimateSampler", model=model, vae=vae, positive=positive, negative=negative, steps=steps,
                     guidance=6.0, seed=seed, denoise_strength=options.pop("denoise_strength", 1.0), **EXACT,
                     **SIZE, **options)
    return latent["samples"]


def _relative_error(got, expected):
    return ((got - expected).abs().max() / expected.abs().max()).item()


def test_the_loader_takes_a_v5_folder_with_the_model_sampling_of_its_scheduler_config(comfyui):
    import comfy.model_sampling

    model, text_encoder, vae, info = _load("v5-t2v")
    assert "V5" in info and "V5.1" not in info
    sampling = model.model.model_sampling
    assert isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete)
    assert isinstance(sampling, comfy.model_sampling.EPS)
    assert not isinstance(sampling, comfy.model_sampling.V_PREDICTION)
    # The demo's scaled_linear 0.00085..0.012 over 1000 steps: the sigmas diffusers' DDIMScheduler gives.
    from diffusers import DDIMScheduler

    from easyanimate_core.demo import SCHEDULER_CONFIG_V5

    alphas = DDIMScheduler.from_config(SCHEDULER_CONFIG_V5).alphas_cumprod
    # ComfyUI builds the betas in float64, diffusers in float32: 1.3e-5 apart at the smallest sigma.
    torch.testing.assert_close(sampling.sigmas, ((1 - alphas) / alphas).sqrt(), rtol=5e-5, atol=0)


def test_text_encode_on_a_v5_model_carries_the_mt5_states(comfyui):
    from easyanimate_pack.nodes._native import TEXT_T5_KEY

    model, text_encoder, _, _ = _load("v5-t2v")
    positive, negative = _prompts(text_encoder)
    config = model.model.diffusion_model.config
    (states, extra), = positive
    assert states.shape[0] == 1 and states.shape[2] == config.text_embed_dim
    assert set(extra) == {TEXT_T5_KEY} and extra[TEXT_T5_KEY].shape[::2] == (1, config.text_embed_dim_t5)
    assert not torch.equal(extra[TEXT_T5_KEY], negative[0][1][TEXT_T5_KEY])
    direct = text_encoder.model.component.encode(["a cat"])
    assert torch.equal(states, direct.states) and torch.equal(extra[TEXT_T5_KEY], direct.states_t5)


@pytest.mark.parametrize("mode, sampler", [("t2v", "DDIM"), ("t2v", "Euler A"), ("i2v", "Euler"), ("v2v", "DPM++"),
                                           ("control", "PNDM")])
def test_the_sampler_node_on_a_v5_model_equals_the_core(comfyui, models_dir, mode, sampler):
    from easyanimate_core.generation import GenerationRequest, sample_latents
    from easyanimate_core.loading import load_scheduler, load_transformer, load_vae
    from easyanimate_core.text_encoder import load_text_encoder

    name, inputs = _v5_mode(mode)
    strength = 0.6 if mode == "v2v" else 1.0
    model, text_encoder, vae, _ = _load(name)
    positive, negative = _prompts(text_encoder)
    node = _sample(model, vae, positive, negative, sampler=sampler, denoise_strength=strength, **inputs)

    folder = models_dir / name
    encoder = load_text_encoder(folder, dtype=torch.float32)
    core_vae = load_vae(folder, dtype=torch.float32)
    request = GenerationRequest(steps=4, guidance=6.0, seed=7, sampler=sampler, strength=strength,
                                start_images=inputs.get("start_image"), end_images=inputs.get("end_image"),
                                input_video=inputs.get("input_video"), control_video=inputs.get("control_video"),
                                **SIZE)
    core = sample_latents(load_transformer(folder, dtype=torch.float32), core_vae, load_scheduler(folder), request,
                          encoder.encode(["a cat"]), encoder.encode(["blurry"]))
    expected = core / core_vae.scaling_factor  # the node's LATENT is unscaled (ComfyUI's process_latent_out)
    assert node.shape == expected.shape == (1, 16, 2, 4, 6)
    assert _relative_error(node, expected) < 1e-5  # ComfyUI's layers and attention vs ours, both fp32
    if sampler == "DDIM":
        assert torch.equal(_sample(model, vae, positive, negative), node)  # sampler "auto" = DDIM on V5


def test_the_sampler_node_refuses_a_prompt_without_mt5_states_and_a_flow_sampler(comfyui):
    model, text_encoder, vae, _ = _load("v5-t2v")
    positive, negative = _prompts(text_encoder)
    bare = [[positive[0][0], {}]]
    with pytest.raises(ValueError, match="the positive conditioning has no mT5 states .*EasyAnimate Text Encode"):
        _sample(model, vae, bare, negative)
    with pytest.raises(ValueError, match="sampler 'Flow' does not fit a DDPM-family scheduler config"):
        _sample(model, vae, positive, negative, sampler="Flow")
    assert comfyui["progress"] == []  # both refused before any VAE encode or step


def test_ksampler_runs_a_v5_model_with_comfyuis_samplers_and_schedulers(comfyui):
    import nodes

    model, text_encoder, vae, _ = _load("v5-t2v")
    positive, negative = _prompts(text_encoder)
    latent = {"samples": torch.zeros(1, 16, 2, 4, 6)}
    results = []
    for sampler, scheduler in (("ddim", "ddim_uniform"), ("euler", "normal"), ("dpmpp_2m", "karras")):
        (out,) = _run(nodes.KSampler, model=model, seed=1, steps=4, cfg=6.0, sampler_name=sampler,
                      scheduler=scheduler, positive=positive, negative=negative, latent_image=latent, denoise=1.0)
        assert out["samples"].shape == (1, 16, 2, 4, 6) and torch.isfinite(out["samples"]).all()
        results.append(out["samples"])
    assert not torch.equal(results[0], results[1])
    (frames,) = _run("EasyAnimateDecode", vae=vae, samples={"samples": results[0]}, tile_size=0)
    assert frames.shape == (5, 32, 48, 3)
    with pytest.raises(ValueError, match="EasyAnimate Scheduler gives the flow sigmas .*DDPM-family.*BasicScheduler"):
        _run("EasyAnimateScheduler", model=model, steps=4, denoise=1.0)
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    (flow,) = _run(ModelSamplingSD3, model=model, shift=3.0)
    with pytest.raises(ValueError, match="switched to flow matching .*ModelSamplingSD3.*V5.1 models only"):
        _run(nodes.KSampler, model=flow, seed=1, steps=2, cfg=6.0, sampler_name="euler", scheduler="normal",
             positive=positive, negative=negative, latent_image=latent, denoise=1.0)


def test_the_activation_estimate_counts_the_prompts_tokens(comfyui):
    model, _, _, _ = _load("v5-t2v")
    base = model.model
    shape = [2, 16, 2, 4, 6]
    counted = base.memory_required(shape, cond_shapes={"c_crossattn": [[1, 20, 32]], "text_states_t5": [[1, 30, 48]]})
    assert counted == base.diffusion_model.activation_bytes(tuple(shape), 50)
    assert base.memory_required(shape) == base.diffusion_model.activation_bytes(tuple(shape), 512)


class _ScaledNoise:
    """ComfyUI's RandomNoise times ``scale``: diffusers' Euler with "leading" spacing starts from noise x
    sqrt(sigma^2 + 1), ComfyUI's euler from noise x sigma below the top sigma; this is the only difference."""

    def __init__(self, seed, scale):
        self.seed, self.scale = seed, scale

    def generate_noise(self, input_latent):
        import comfy.sample

        return comfy.sample.prepare_noise(input_latent["samples"], self.seed) * self.scale


def _v5_mode(mode):
    """(model folder, the mode's inputs) on the V5 demos."""
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(1, 32, 48, 3, generator=gen)
    if mode == "v2v":
        return "v5-inp", {"input_video": torch.rand(5, 32, 48, 3, generator=gen)}
    if mode == "i2v":
        return "v5-inp", {"start_image": image, "end_image": torch.rand(1, 32, 48, 3, generator=gen)}
    if mode == "control":
        return "v5-control", {"control_video": torch.rand(5, 32, 48, 3, generator=gen)}
    return "v5-t2v", {}


@pytest.mark.parametrize("mode", ["t2v", "i2v", "control"])
def test_comfyuis_euler_on_ddim_uniform_equals_our_euler_with_easyanimate_conditioning(comfyui, mode):
    """SamplerCustomAdvanced + BasicScheduler ddim_uniform + euler on EasyAnimate Conditioning's output equals
    EasyAnimate Sampler with Euler: ddim_uniform gives the sigmas of the demo config's "leading" timesteps
    (751, 501, 251, 1 for 4 steps) and ComfyUI's EPS model sampling the same input scaling, timesteps and
    denoised prediction; only the first noise's scale differs (see _ScaledNoise)."""
    import comfy_extras.nodes_custom_sampler as custom

    name, inputs = _v5_mode(mode)
    model, text_encoder, vae, _ = _load(name)
    positive, negative = _prompts(text_encoder)
    ours = _sample(model, vae, positive, negative, sampler="Euler", **inputs)
    cond_positive, cond_negative, latent = _run("EasyAnimateConditioning", model=model, positive=positive,
                                                negative=negative, vae=vae, seed=7, **SIZE, **inputs)
    (sigmas,) = _run(custom.BasicScheduler, model=model, scheduler="ddim_uniform", steps=4, denoise=1.0)
    first = float(sigmas[0])
    (guider,) = _run(custom.CFGGuider, model=model, positive=cond_positive, negative=cond_negative, cfg=6.0)
    (euler,) = _run(custom.KSamplerSelect, sampler_name="euler")
    out, _ = _run(custom.SamplerCustomAdvanced, noise=_ScaledNoise(7, (first ** 2 + 1) ** 0.5 / first),
                  guider=guider, sampler=euler, sigmas=sigmas, latent_image=latent)
    assert out["samples"].shape == ours.shape == (1, 16, 2, 4, 6)
    assert _relative_error(out["samples"], ours) < 1e-5


def test_v5_conditioning_takes_inp_images_and_control_video_and_refuses_a_reference_image(comfyui):
    model, text_encoder, vae, _ = _load("v5-control")
    positive, negative = _prompts(text_encoder)
    _, inputs = _v5_mode("control")
    with pytest.raises(ValueError, match="a V5 Control model has no reference-image input"):
        _run("EasyAnimateConditioning", model=model, positive=positive, negative=negative, vae=vae, seed=7,
             reference_image=torch.rand(1, 32, 48, 3), **SIZE, **inputs)
    with pytest.raises(ValueError, match="camera control is an EasyAnimate V5.1 feature"):
        (pan,) = _run("EasyAnimateCameraPreset", preset="Pan Up", frames=5, speed=1.0, fx=0.53, fy=0.95)
        _run("EasyAnimateConditioning", model=model, positive=positive, negative=negative, vae=vae, seed=7,
             camera=pan, **SIZE)
    assert comfyui["progress"] == []  # refused before the VAE encoded anything


def test_ksampler_refuses_a_prompt_of_the_other_family_by_name(comfyui):
    import nodes

    v5, v5_encoder, _, _ = _load("v5-t2v")
    v51, v51_encoder, _, _ = _load("v51-t2v")
    latent = {"samples": torch.zeros(1, 16, 2, 4, 6)}
    for model, (positive, negative), message in (
            (v5, _prompts(v51_encoder), "has no mT5 states for the EasyAnimate V5 .*EasyAnimate Text Encode"),
            (v51, _prompts(v5_encoder), "carries the mT5 states of an EasyAnimate V5 text encoder")):
        with pytest.raises(ValueError, match=message):
            _run(nodes.KSampler, model=model, seed=1, steps=1, cfg=6.0, sampler_name="euler", scheduler="normal",
                 positive=positive, negative=negative, latent_image=latent, denoise=1.0)


def test_a_v5_lora_loads_through_our_loader_and_a_v51_lora_is_refused_by_name(comfyui):
    from easyanimate_core.lora import LoraLayer, save_lora

    model, _, _, _ = _load("v5-t2v")
    transformer = model.model.diffusion_model
    gen = torch.Generator().manual_seed(0)

    def layer(name):
        linear = dict(transformer.named_modules())[name]
        return LoraLayer(torch.randn(2, linear.in_features, generator=gen), torch.randn(linear.out_features, 2,
                                                                                      generator=gen), 2.0)

    save_lora(comfyui["loras"] / "reward.safetensors", {n: layer(n) for n in ("text_proj_t5", "proj_out")})
    (styled,) = _run("EasyAnimateLoraLoader", model=model, lora_name="reward.safetensors", strength=0.7)
    assert sorted(styled.patches) == ["diffusion_model.proj_out.weight", "diffusion_model.text_proj_t5.weight"]
    width = transformer.config.inner_dim
    save_lora(comfyui["loras"] / "v51.safetensors",
              {"text_proj.1": LoraLayer(torch.randn(2, 3584), torch.randn(width, 2), 2.0)})
    with pytest.raises(ValueError, match=r"is a LoRA for EasyAnimate V5\.1 \(Qwen2-VL\).*load a V5\.1 model"):
        _run("EasyAnimateLoraLoader", model=model, lora_name="v51.safetensors", strength=1.0)
