"""TeaCache and CFG skip: off equals the plain loop bit for bit, on skips steps and stays close, the official
coefficients by model size, one cache per run and nothing of it left on the model; the CLI, our sampler node and
the model patch for ComfyUI's samplers (real ComfyUI modules)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from conftest import load_pack

from easyanimate_core.demo import demo_transformer_config, write_demo_model
from easyanimate_core.sampling import Conditioning, denoise
from easyanimate_core.scheduler import FlowMatchEulerScheduler
from easyanimate_core.teacache import COEFFICIENTS, TeaCache, TeaCacheOptions, coefficients_for
from easyanimate_core.transformer import EasyAnimateTransformer

pack = load_pack()
NODES = pack.NODE_CLASS_MAPPINGS


def _model(variant="t2v"):
    torch.manual_seed(0)
    return EasyAnimateTransformer(demo_transformer_config(variant), dtype=torch.float32).eval()


def _run(model, steps=12, **kwargs):
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(1, 16, 2, 4, 6, generator=gen)
    text, negative = (torch.randn(1, 7, model.config.text_embed_dim, generator=gen) for _ in "ab")
    with torch.inference_mode():
        return denoise(model, FlowMatchEulerScheduler(), noise=noise, text=text, negative_text=negative, steps=steps,
                       guidance=6.0, **kwargs)


class Counting:
    """Counts the transformer calls that ran the blocks (a forward pre-hook on the first block)."""

    def __init__(self, model):
        self.calls = []
        model.transformer_blocks[0].register_forward_pre_hook(lambda block, args: self.calls.append(args[0].shape[0]))


def test_off_and_never_reusing_equal_the_plain_loop_bit_for_bit():
    model = _model()
    plain = _run(model)
    assert torch.equal(_run(model, teacache=TeaCacheOptions(0.0)), plain)
    assert torch.equal(_run(model, teacache=TeaCacheOptions(1e-12)), plain)  # the cache path, computing every step
    assert torch.equal(_run(model, cfg_skip_ratio=0.0), plain)


def test_a_threshold_skips_steps_and_stays_close(caplog):
    model = _model()
    plain = _run(model, steps=20)
    counter = Counting(model)
    with caplog.at_level(logging.INFO, logger="easyanimate_core.sampling"):
        cached = _run(model, steps=20, teacache=TeaCacheOptions(0.3))
    assert 2 <= len(counter.calls) < 20  # the first and the last step at least
    summary = next(r.getMessage() for r in caplog.records if "TeaCache" in r.getMessage())
    assert f"{len(counter.calls)} transformer evaluations for 20 steps" in summary
    error = ((cached - plain).abs().max() / plain.abs().max()).item()
    assert 0 < error < 0.5, error


@pytest.mark.parametrize("start, end", [(1, 1), (5, 3)])
def test_the_first_and_last_steps_are_always_computed(start, end):
    options = TeaCacheOptions(10.0, start_steps=start, end_steps=end)  # would reuse every step it may
    cache = TeaCache(options, steps=12, coefficients=(0.0, 0.0, 0.0, 0.0, 0.0))
    x = torch.ones(2, 4, 3)
    for step in range(12):
        if cache.reuse(float(1000 - step), x, 2) is None:
            cache.store(2, x)
    assert cache.skipped == list(range(start, 12 - end))
    assert cache.evaluations == 12 - len(cache.skipped)


def test_cfg_skip_runs_only_the_conditional_pass_on_the_last_steps():
    model = _model()
    counter = Counting(model)
    _run(model, steps=10, cfg_skip_ratio=0.3)
    assert counter.calls == [2] * 7 + [1] * 3  # the official rule: from step 10 * (1 - 0.3) on
    with pytest.raises(ValueError, match="cfg_skip_ratio = 1.5"):
        _run(model, cfg_skip_ratio=1.5)


def test_teacache_and_cfg_skip_together_keep_residuals_per_batch_layout():
    model = _model("inp")
    inpaint = Conditioning(inpaint_latents=torch.randn(1, 17, 2, 4, 6))
    out = _run(model, steps=12, teacache=TeaCacheOptions(0.3), cfg_skip_ratio=0.5, conditioning=inpaint)
    assert out.shape == (1, 16, 2, 4, 6) and torch.isfinite(out).all()


def test_coefficients_follow_the_model_size_and_bad_options_are_refused():
    twelve = demo_transformer_config("t2v")  # MMDiT throughout, like the 12B
    seven = type(twelve)(**{**twelve.__dict__, "num_layers": 4, "mmdit_layers": 2})
    assert coefficients_for(twelve) == COEFFICIENTS["12b"] and coefficients_for(seven) == COEFFICIENTS["7b"]
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="TeaCache threshold"):
            TeaCacheOptions(bad)
    with pytest.raises(ValueError, match="start_steps = -1"):
        TeaCacheOptions(0.1, start_steps=-1)


def test_an_interrupt_leaves_no_cache_behind():
    model = _model()
    caches = []
    real_forward = model.forward

    def spying_forward(*args, step_cache=None, **kwargs):
        caches.append(step_cache)
        return real_forward(*args, step_cache=step_cache, **kwargs)

    model.forward = spying_forward

    def cancel(step, total, latents):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(model, teacache=TeaCacheOptions(0.3), callback=cancel)
    assert caches and all(c is caches[0] for c in caches)
    assert not any(isinstance(v, TeaCache) for v in vars(model).values())
    import gc
    import weakref

    ref = weakref.ref(caches[0])
    caches.clear()
    gc.collect()
    assert ref() is None  # the run's cache went with the run


def test_the_command_line_takes_teacache_and_cfg_skip(tmp_path, caplog):
    from easyanimate_core.__main__ import main

    out = tmp_path / "v.mp4"
    with caplog.at_level(logging.INFO):
        code = main(["generate", "--prompt", "a cat", "--model", "demo", "--frames", "5", "--width", "48",
                     "--height", "32", "--steps", "8", "--teacache", "--cfg-skip-ratio", "0.25", "--output", str(out)])
    assert code == 0 and out.is_file()
    assert any("TeaCache (threshold 0.1)" in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_demo_model(root / "demo-t2v", variant="t2v")
    return root


def test_the_sampler_node_and_the_model_patch_cache_in_comfyui(comfyui):
    import comfy_extras.nodes_custom_sampler as custom

    def run(node, **inputs):
        instance = node()
        return getattr(instance, node.FUNCTION)(**inputs)

    model, text_encoder, vae, _ = run(NODES["EasyAnimateModelLoader"], model="demo-t2v", precision="fp32",
                                      memory_mode="full", blocks_on_gpu=-1, weight_dtype="default")
    positive, negative = run(NODES["EasyAnimateTextEncode"], text_encoder=text_encoder, prompt="a cat",
                             negative_prompt="")
    counter = Counting(model.model.diffusion_model)
    sample = dict(model=model, vae=vae, positive=positive, negative=negative, width=48, height=32, frames=5, steps=12,
                  guidance=6.0, seed=1, denoise_strength=1.0, teacache_start_steps=1, teacache_end_steps=1,
                  cfg_skip_ratio=0.0)
    (exact,) = run(NODES["EasyAnimateSampler"], teacache_threshold=0.0, **sample)
    assert len(counter.calls) == 12
    counter.calls.clear()
    (ours,) = run(NODES["EasyAnimateSampler"], teacache_threshold=0.3, **sample)
    ours_calls = len(counter.calls)
    assert 2 <= ours_calls < 12

    (patched,) = run(NODES["EasyAnimateTeaCache"], model=model, teacache_threshold=0.3, teacache_start_steps=1,
                     teacache_end_steps=1)
    (sigmas,) = run(NODES["EasyAnimateScheduler"], model=patched, steps=12, denoise=1.0)
    (guider,) = run(custom.CFGGuider, model=patched, positive=positive, negative=negative, cfg=6.0)
    (sampler,) = run(custom.KSamplerSelect, sampler_name="euler")
    (noise,) = run(custom.RandomNoise, noise_seed=1)
    counter.calls.clear()
    out, _ = run(custom.SamplerCustomAdvanced, noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                 latent_image={"samples": torch.zeros(1, 16, 2, 4, 6)})
    assert 2 <= len(counter.calls) < 12
    torch.testing.assert_close(out["samples"], ours["samples"], rtol=0, atol=1e-4)  # the same steps reused
    assert "easyanimate_teacache" not in str(patched.model_options.get("transformer_options", {}).keys())


def test_a_v5_model_is_told_that_its_cache_uses_the_v51_coefficients(caplog):
    v51 = demo_transformer_config("t2v")
    v5 = dataclasses.replace(v51, text_embed_dim_t5=48, add_norm_text_encoder=False)
    assert TeaCacheOptions(0.0).run(10, v5) is None and not caplog.text  # off: nothing to say
    cache = TeaCacheOptions(0.1).run(10, v5)
    assert cache.coefficients == coefficients_for(v51) and "uses the V5.1 coefficients" in caplog.text
    caplog.clear()
    TeaCacheOptions(0.1).run(10, v51)
    assert "V5.1 coefficients" not in caplog.text
