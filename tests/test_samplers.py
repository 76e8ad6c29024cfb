"""Samplers: each diffusers scheduler through our denoise loop equals a hand-written loop calling the same diffusers
class directly (same model function, noise and config); the default Flow stays bit for bit the exact flow Euler;
a sampler of the other family and an unsupported scheduler class are refused by name; the CLI runs every name."""

from __future__ import annotations

import inspect
import json
import math
import shutil

import diffusers
import pytest
import torch

from easyanimate_core.__main__ import main
from easyanimate_core.demo import demo_transformer_config, write_demo_model
from easyanimate_core.loading import inspect_model, load_scheduler
from easyanimate_core.samplers import DDPM_SAMPLERS, FLOW_SAMPLERS, SchedulerConfig
from easyanimate_core.sampling import denoise
from easyanimate_core.scheduler import FlowMatchEulerScheduler
from easyanimate_core.teacache import TeaCacheOptions
from easyanimate_core.transformer import EasyAnimateTransformer

# A V5-style DDPM-family config (the released file's values are read at load time; these are the usual ones).
DDIM_CONFIG = {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
               "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
               "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
FLOW_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
               "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15}
SHAPE = (1, 16, 2, 4, 6)


class ModelFunction(torch.nn.Module):
    """A stand-in transformer: a smooth function of the latents, the timestep and the text (so CFG matters)."""

    config = None
    dtype, device = torch.float32, torch.device("cpu")

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, latents, timestep, text, **_):
        t = timestep.float().reshape(-1, 1, 1, 1, 1) / 1000.0
        return self.weight * latents * (1.0 - t) + torch.sin(3.0 * t) + text.mean(dim=(1, 2)).reshape(-1, 1, 1, 1, 1)


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    noise, clean = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    text, negative = torch.randn(1, 5, 8, generator=gen), torch.randn(1, 5, 8, generator=gen)
    return noise, clean, text, negative


def _by_hand(scheduler, model, noise, text, negative, *, steps, guidance, generator=None, strength=1.0, clean=None):
    """diffusers' pipeline loop, written out (CFG batch [negative, positive]; img2img's get_timesteps)."""
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    if strength < 1.0:
        start = steps - min(int(steps * strength), steps)
        timesteps = timesteps[start * scheduler.order:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start * scheduler.order)
        latents = scheduler.add_noise(clean, noise, timesteps[:1])
    else:
        latents = noise * scheduler.init_noise_sigma
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t in timesteps:
        x = scheduler.scale_model_input(latents, t)
        uncond, cond = model(torch.cat([x, x]), t.expand(2), torch.cat([negative, text])).chunk(2)
        latents = scheduler.step(uncond + guidance * (cond - uncond), t, latents, **extra).prev_sample
    return latents


def _ours(scheduler, model, noise, text, negative, *, steps, guidance, **kwargs):
    with torch.no_grad():
        return denoise(model, scheduler, noise=noise, text=text, negative_text=negative, steps=steps,
                       guidance=guidance, **kwargs)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("name", sorted(DDPM_SAMPLERS))
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_each_ddpm_sampler_equals_the_diffusers_class_called_directly(name, prediction, strength):
    config = SchedulerConfig.from_config_dict({**DDIM_CONFIG, "prediction_type": prediction}, "scheduler_config.json")
    model = ModelFunction()
    noise, clean, text, negative = _inputs()
    reference = getattr(diffusers, DDPM_SAMPLERS[name]).from_config({**DDIM_CONFIG, "prediction_type": prediction})
    assert reference.config.prediction_type == prediction
    with torch.no_grad():
        expected = _by_hand(reference, model, noise, text, negative, steps=5, guidance=4.0, strength=strength,
                            clean=clean, generator=torch.Generator().manual_seed(9))
    got = _ours(config.build(name), model, noise, text, negative, steps=5, guidance=4.0, strength=strength,
                clean_latents=clean if strength < 1 else None, generator=torch.Generator().manual_seed(9))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["Flow UniPC", "Flow DPM++"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_flow_solvers_equal_diffusers_with_flow_sigmas_at_the_released_shift(name, strength):
    config = SchedulerConfig.from_config_dict(FLOW_CONFIG, "scheduler_config.json")
    model = ModelFunction()
    noise, clean, text, negative = _inputs(1)
    solver = {"Flow UniPC": diffusers.UniPCMultistepScheduler, "Flow DPM++": diffusers.DPMSolverMultistepScheduler}
    reference = solver[name](prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=math.e)
    with torch.no_grad():
        expected = _by_hand(reference, model, noise, text, negative, steps=6, guidance=5.0, strength=strength,
                            clean=clean)
    built = config.build(name)
    assert built.config.flow_shift == pytest.approx(math.e) and built.config.prediction_type == "flow_prediction"
    got = _ours(built, model, noise, text, negative, steps=6, guidance=5.0, strength=strength,
                clean_latents=clean if strength < 1 else None)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The released schedule's noise-level family: diffusers' own spacing of each solver, shifted as Flow shifts it.
    built.set_timesteps(6)
    spacing = torch.linspace(1.0, 1.0 / 1000, 7, dtype=torch.float64)
    base = spacing[:-1] if name == "Flow UniPC" else (1.0 - spacing).flip(0)[:-1]
    shifted = FlowMatchEulerScheduler()._shift(base).float()
    torch.testing.assert_close(built.sigmas[1:-1], shifted[1:], atol=1e-6, rtol=0)


def _exact_by_hand(model, noise, text, negative, *, steps, guidance, strength=1.0, clean=None):
    """The loop as it was before samplers existed: the exact flow Euler's schedule and step, nothing else."""
    flow = FlowMatchEulerScheduler()
    schedule = flow.schedule(steps, strength=strength)
    latents = noise.clone()
    if strength < 1.0:
        latents = flow.add_noise(clean, latents, schedule.sigmas[0])
    states = torch.cat([negative, text])
    for i, t in enumerate(schedule.timesteps):
        uncond, cond = model(latents.expand(2, -1, -1, -1, -1), t.expand(2), states).chunk(2)
        latents = flow.step(uncond + guidance * (cond - uncond), schedule, i, latents)
    return latents


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_the_default_flow_is_the_exact_flow_euler_bit_for_bit(strength):
    torch.manual_seed(0)
    model = EasyAnimateTransformer(demo_transformer_config("t2v"), dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(3)
    noise, clean = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    text, negative = (torch.randn(1, 7, model.config.text_embed_dim, generator=gen) for _ in "ab")
    config = SchedulerConfig.from_config_dict(FLOW_CONFIG)
    assert config.default_sampler == "Flow" and config.build() == FlowMatchEulerScheduler()
    with torch.no_grad():
        expected = _exact_by_hand(model, noise, text, negative, steps=4, guidance=6.0, strength=strength, clean=clean)
    kwargs = dict(steps=4, guidance=6.0, strength=strength, clean_latents=clean if strength < 1 else None)
    for scheduler in (FlowMatchEulerScheduler(), config, config.build("Flow")):
        assert torch.equal(_ours(scheduler, model, noise, text, negative, **kwargs), expected)


def test_teacache_and_cfg_skip_run_with_a_diffusers_sampler_and_pndm_refuses_teacache():
    torch.manual_seed(0)
    model = EasyAnimateTransformer(demo_transformer_config("t2v"), dtype=torch.float32).eval()
    config = SchedulerConfig.from_config_dict(DDIM_CONFIG)
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(SHAPE, generator=gen)
    text, negative = (torch.randn(1, 7, model.config.text_embed_dim, generator=gen) for _ in "ab")
    seen = []
    got = _ours(config.build("Euler A"), model, noise, text, negative, steps=6, guidance=6.0,
                teacache=TeaCacheOptions(0.3), cfg_skip_ratio=0.3, generator=torch.Generator().manual_seed(1),
                callback=lambda step, total, latents: seen.append((step, total)))
    assert torch.isfinite(got).all() and seen == [(i, 6) for i in range(1, 7)]
    with pytest.raises(ValueError, match="TeaCache cannot run with PNDMScheduler.*same timestep"):
        _ours(config.build("PNDM"), model, noise, text, negative, steps=4, guidance=6.0,
              teacache=TeaCacheOptions(0.1))
    pndm = []
    _ours(config.build("PNDM"), model, noise, text, negative, steps=4, guidance=6.0,
          callback=lambda step, total, latents: pndm.append(total))
    assert len(pndm) == pndm[0] > 4  # PNDM's warm-up evaluates the model more often than the steps


def test_a_v5_model_samples_with_its_mt5_states_batched_for_cfg_and_skipped_with_it():
    torch.manual_seed(0)
    model = EasyAnimateTransformer(demo_transformer_config("t2v", version="5"), dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(4)
    noise = torch.randn(SHAPE, generator=gen)
    bert, bert_negative = (torch.randn(1, 6, model.config.text_embed_dim, generator=gen) for _ in "ab")
    t5, t5_negative = (torch.randn(1, 9, model.config.text_embed_dim_t5, generator=gen) for _ in "ab")
    config = SchedulerConfig.from_config_dict({**DDIM_CONFIG, "prediction_type": "v_prediction"})
    reference = diffusers.DDIMScheduler.from_config({**DDIM_CONFIG, "prediction_type": "v_prediction"})
    reference.set_timesteps(4)
    expected = noise.clone()
    with torch.no_grad():
        for i, t in enumerate(reference.timesteps):
            if i < 3:  # cfg_skip_ratio 0.25: the last step runs the positive prompt alone
                uncond, cond = (model(expected, t, b, text_states_t5=f) for b, f in ((bert_negative, t5_negative),
                                                                                      (bert, t5)))
                prediction = uncond + 6.0 * (cond - uncond)
            else:
                prediction = model(expected, t, bert, text_states_t5=t5)
            expected = reference.step(prediction, t, expected).prev_sample
    got = _ours(config.build("DDIM"), model, noise, bert, bert_negative, steps=4, guidance=6.0, text_t5=t5,
                negative_text_t5=t5_negative, cfg_skip_ratio=0.25)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="negative prompt needs its mT5 states"):
        _ours(config.build("DDIM"), model, noise, bert, bert_negative, steps=1, guidance=6.0, text_t5=t5)


def test_a_sampler_of_the_other_family_and_an_unsupported_class_are_refused_by_name():
    flow, ddpm = SchedulerConfig.from_config_dict(FLOW_CONFIG), SchedulerConfig.from_config_dict(DDIM_CONFIG, "x.json")
    assert flow.samplers == FLOW_SAMPLERS and ddpm.default_sampler == "DDIM"
    with pytest.raises(ValueError, match=r"'DDIM' does not fit a flow-matching .*Flow, Flow UniPC, Flow DPM\+\+"):
        flow.build("DDIM")
    with pytest.raises(ValueError, match=r"'Flow' does not fit a DDPM-family .*\(x.json\).*Euler, Euler A, DPM\+\+, "
                                         r"PNDM, DDIM \(default DDIM\)"):
        ddpm.build("Flow")
    with pytest.raises(ValueError, match="'Heun' is not one of Flow, "):
        flow.build("Heun")
    with pytest.raises(ValueError, match="'LCMScheduler' in x.json is not supported: .*FlowMatchEulerDiscreteScheduler"
                                         ".*DDIMScheduler"):
        SchedulerConfig.from_config_dict({"_class_name": "LCMScheduler"}, "x.json")
    with pytest.raises(ValueError, match="prediction_type = 'sample' in x.json: .*epsilon, v_prediction"):
        SchedulerConfig.from_config_dict({**DDIM_CONFIG, "prediction_type": "sample"}, "x.json")
    with pytest.raises(ValueError, match="clip_sample = 'false' in x.json: expected true or false"):
        SchedulerConfig.from_config_dict({**DDIM_CONFIG, "clip_sample": "false"}, "x.json")
    with pytest.raises(ValueError, match="DDIMScheduler cannot be built from x.json: .*cubic"):
        SchedulerConfig.from_config_dict({**DDIM_CONFIG, "beta_schedule": "cubic"}, "x.json")


# ------------------------------------------------------------------------------------------------ command line
SMALL = ["--frames", "5", "--width", "48", "--height", "32", "--steps", "4", "--prompt", "a red ball"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The V5.1 demo, its copy with a V5-style DDIM config (v prediction), and the V5 demo (Bert + mT5, DDIM)."""
    root = tmp_path_factory.mktemp("samplers")
    flow = write_demo_model(root / "flow", variant="t2v")
    ddpm = root / "ddpm"
    shutil.copytree(flow, ddpm)
    (ddpm / "scheduler" / "scheduler_config.json").write_text(json.dumps({**DDIM_CONFIG,
                                                                          "prediction_type": "v_prediction"}))
    return {"flow": flow, "ddpm": ddpm, "v5": write_demo_model(root / "v5", variant="t2v", version="5")}


@pytest.mark.parametrize("family, name", [*(("flow", n) for n in FLOW_SAMPLERS),
                                          *(("ddpm", n) for n in DDPM_SAMPLERS), ("ddpm", None)])
def test_the_cli_runs_each_sampler(tmp_path, folders, family, name, caplog):
    output = tmp_path / "x.mp4"
    extra = ["--sampler", name] if name else []
    with caplog.at_level("INFO", logger="easyanimate_core"):
        assert main(["generate", *SMALL, "--model", str(folders[family]), "--output", str(output), *extra]) == 0
    assert output.is_file()
    assert f"4 steps of {name or 'DDIM'}" in caplog.text


@pytest.mark.parametrize("spelling, name", [("ddim", "DDIM"), ("euler_a", "Euler A"), ("dpm++", "DPM++"),
                                            ("Euler", "Euler"), ("pndm", "PNDM")])
def test_the_cli_runs_the_v5_demo_with_each_sampler_spelled_loosely(tmp_path, folders, spelling, name, caplog):
    with caplog.at_level("INFO", logger="easyanimate_core"):
        assert main(["generate", *SMALL, "--model", str(folders["v5"]), "--sampler", spelling,
                     "--output", str(tmp_path / "x.mp4")]) == 0
    assert f"4 steps of {name}" in caplog.text


def test_the_cli_refuses_a_sampler_of_the_other_family_before_any_weight(tmp_path, folders, caplog, monkeypatch,
                                                                         capsys):
    import easyanimate_core.text_encoder as text_encoder

    monkeypatch.setattr(text_encoder, "load_text_encoder", lambda *a, **k: pytest.fail("loaded a text encoder"))
    assert main(["generate", *SMALL, "--model", str(folders["flow"]), "--sampler", "DDIM",
                 "--output", str(tmp_path / "x.mp4")]) == 2
    assert "sampler 'DDIM' does not fit a flow-matching scheduler config" in caplog.text
    assert main(["generate", *SMALL, "--model", str(folders["ddpm"]), "--sampler", "PNDM", "--steps", "3",
                 "--output", str(tmp_path / "x.mp4")]) == 2
    assert "PNDMScheduler cannot make a schedule of 3 steps" in caplog.text
    with pytest.raises(SystemExit):
        main(["generate", *SMALL, "--sampler", "heun"])
    assert "sampler 'heun' is not one of Flow, Flow UniPC" in capsys.readouterr().err
    assert isinstance(load_scheduler(folders["ddpm"]), SchedulerConfig)
    inspect_model(folders["ddpm"])  # a V5-style scheduler config passes the checks before loading


# ------------------------------------------------------------------------------------------ EasyAnimate Sampler node
@pytest.fixture(scope="module")
def models_dir(folders):
    """The comfyui fixture's models/EasyAnimate: the V5.1 demo and its copy with a V5-style DDIM config."""
    return folders["flow"].parent


def _node_sample(model_name, **options):
    from conftest import load_pack

    nodes = load_pack().NODE_CLASS_MAPPINGS

    def run(node_id, **inputs):
        node = nodes[node_id]()
        return getattr(node, node.FUNCTION)(**inputs)

    model, text_encoder, vae, _ = run("EasyAnimateModelLoader", model=model_name, precision="fp32",
                                      memory_mode="model_cpu_offload", blocks_on_gpu=-1, weight_dtype="default")
    positive, negative = run("EasyAnimateTextEncode", text_encoder=text_encoder, prompt="a cat", negative_prompt="")
    (latent,) = run("EasyAnimateSampler", model=model, vae=vae, positive=positive, negative=negative, width=48,
                    height=32, frames=5, steps=4, guidance=6.0, seed=1, denoise_strength=1.0, teacache_threshold=0.0,
                    teacache_start_steps=1, teacache_end_steps=1, cfg_skip_ratio=0.0, **options)
    return latent["samples"]


def test_the_sampler_node_takes_a_sampler_of_the_model_family(comfyui):
    default = _node_sample("flow")
    assert torch.equal(_node_sample("flow", sampler="Flow"), default)  # workflows saved with "Flow": unchanged
    assert torch.equal(_node_sample("flow", sampler="auto"), default)
    assert not torch.equal(_node_sample("flow", sampler="Flow UniPC"), default)
    ddim = _node_sample("ddpm", sampler="DDIM")
    assert torch.isfinite(ddim).all() and torch.equal(_node_sample("ddpm"), ddim)  # auto: the family's default
    with pytest.raises(ValueError, match="sampler 'Flow' does not fit a DDPM-family scheduler config .*DDIM"):
        _node_sample("ddpm", sampler="Flow")
    assert comfyui["progress"][-1][:2] == (4, 4)  # the refusal came before any VAE encode or step
