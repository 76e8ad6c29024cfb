"""Flow-matching Euler against diffusers' FlowMatchEulerDiscreteScheduler under the V5.1 config."""

from __future__ import annotations

import pytest
import torch

from easyanimate_core import FlowMatchEulerScheduler
from easyanimate_core.demo import SCHEDULER_CONFIG as V51_SCHEDULER_CONFIG



def _diffusers(steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(V51_SCHEDULER_CONFIG)
    scheduler.set_timesteps(steps, mu=1)
    return scheduler


@pytest.mark.parametrize("steps", [1, 4, 25, 50])
def test_schedule_matches_diffusers(steps):
    ours = FlowMatchEulerScheduler.from_config_dict(V51_SCHEDULER_CONFIG).schedule(steps)
    reference = _diffusers(steps)
    torch.testing.assert_close(ours.sigmas, reference.sigmas.float(), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.timesteps, reference.timesteps.float(), atol=1e-3, rtol=0)


def test_documented_50_step_timesteps():
    timesteps = FlowMatchEulerScheduler().schedule(50).timesteps
    torch.testing.assert_close(timesteps[:5], torch.tensor([1000.0, 992.40, 984.60, 976.59, 968.37]), atol=0.01, rtol=0)
    torch.testing.assert_close(timesteps[-3:], torch.tensor([105.95, 56.08, 2.71]), atol=0.01, rtol=0)


def test_euler_steps_match_diffusers():
    steps = 6
    schedule = FlowMatchEulerScheduler().schedule(steps)
    reference = _diffusers(steps)
    gen = torch.Generator().manual_seed(0)
    ours = theirs = torch.randn(1, 16, 2, 4, 6, generator=gen)
    for i, t in enumerate(reference.timesteps):
        velocity = torch.randn(ours.shape, generator=gen)
        ours = FlowMatchEulerScheduler.step(velocity, schedule, i, ours)
        theirs = reference.step(velocity, t, theirs, return_dict=False)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_strength_keeps_the_tail_of_the_schedule_and_noises_like_diffusers():
    scheduler = FlowMatchEulerScheduler()
    full, partial = scheduler.schedule(10), scheduler.schedule(10, strength=0.7)
    assert len(partial) == 7
    torch.testing.assert_close(partial.sigmas, full.sigmas[3:])
    reference = _diffusers(10)
    clean, noise = torch.randn(1, 16, 1, 4, 6), torch.randn(1, 16, 1, 4, 6)
    expected = reference.scale_noise(clean, reference.timesteps[3:4], noise)
    torch.testing.assert_close(scheduler.add_noise(clean, noise, partial.sigmas[0]), expected, atol=1e-6, rtol=0)


def test_bad_values_are_refused_with_the_value():
    with pytest.raises(ValueError, match="steps = 0"):
        FlowMatchEulerScheduler().schedule(0)
    with pytest.raises(ValueError, match="strength = 1.5"):
        FlowMatchEulerScheduler().schedule(10, strength=1.5)
    with pytest.raises(ValueError, match="strength = 0.05 with 10 steps"):
        FlowMatchEulerScheduler().schedule(10, strength=0.05)
    with pytest.raises(ValueError, match="DDIMScheduler.*FlowMatchEulerDiscreteScheduler"):
        FlowMatchEulerScheduler.from_config_dict({"_class_name": "DDIMScheduler"}, source="scheduler_config.json")
