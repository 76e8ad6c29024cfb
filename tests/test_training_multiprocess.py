"""LoRA training in two processes (torchrun, gloo on the CPU), as several GPUs run it: both ranks train together,
each keeps its own random state in the checkpoint, and a resumed run continues the same loss curve."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from easyanimate_core.demo import write_demo_model
from test_training import write_dataset

ARGS = ["--name", "stripes", "--rank", "4", "--alpha", "4", "--learning-rate", "1e-2", "--checkpoint-every", "2",
        "--video-size", "40", "--image-size", "40", "--frames", "5", "--frame-stride", "1", "--seed", "7",
        "--save-dtype", "float32", "--mixed-precision", "no", "--caption-dropout", "0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(data: Path, model: Path, output: Path, *extra: str) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "easyanimate_core", "train-lora", "--data", str(data),
               "--model", str(model), "--output", str(output), *ARGS, *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _losses(output: Path) -> list[tuple[int, float]]:
    with (output / "losses.csv").open(encoding="utf-8") as f:
        return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    return write_dataset(root / "data"), write_demo_model(root / "demo", variant="t2v", seed=0), root


def test_two_processes_train_together_and_resume_to_the_same_curve(inputs):
    data, model, root = inputs
    _torchrun(data, model, root / "resumed", "--steps", "4")
    checkpoint = root / "resumed" / "checkpoints" / "checkpoint-000004"
    assert {p.name for p in checkpoint.glob("random_states_*.pkl")} == {"random_states_0.pkl",
                                                                         "random_states_1.pkl"}
    assert [step for step, _ in _losses(root / "resumed")] == [1, 2, 3, 4]  # one curve, written by rank 0 only
    _torchrun(data, model, root / "resumed", "--steps", "6", "--resume")
    out = _torchrun(data, model, root / "straight", "--steps", "6")
    assert out.count("lora=") == 1 and out.count("step 6/6 ") == 1  # reported once, by rank 0
    resumed, straight = _losses(root / "resumed"), _losses(root / "straight")
    assert [step for step, _ in resumed] == list(range(1, 7))
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in straight], rel=1e-6)
    assert (root / "straight" / "stripes.safetensors").is_file()
    assert not [p for p in root.rglob("*") if ".partial" in p.name]
