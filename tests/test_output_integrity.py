"""A reported success means a complete, readable file: every writer of the pack (video, PNG, LoRA, training cache,
reports, checkpoints) writes a temporary name, checks it and renames it; a failure (a full disk, a file-size limit,
an encoder error) raises OSError naming the path and the reason and leaves nothing behind; the command line exits
non-zero without its success line; half-written files of a killed run are removed by the next run."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import imageio_ffmpeg
import pytest
import torch
from conftest import REPO_ROOT

from easyanimate_core import atomic_files
from easyanimate_core.__main__ import main
from easyanimate_core.demo import write_demo_model
from easyanimate_core.lora import LoraLayer, save_lora
from easyanimate_core.safetensors_io import read_header
from easyanimate_core.training import checkpoints
from easyanimate_core.training.cache import DiskCache
from easyanimate_core.video import read_image, read_video, write_mp4, write_png

SMALL = ["--frames", "5", "--width", "48", "--height", "32", "--steps", "2", "--prompt", "a red ball"]


def _frames(count: int = 5, height: int = 32, width: int = 48) -> torch.Tensor:
    return torch.rand(count, height, width, 3, generator=torch.Generator().manual_seed(count))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(atomic_files.PARTIAL))


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The id of a process that has ended (what a killed run's temporary names carry)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("models") / "demo-t2v", variant="t2v", seed=0)


def _limited(limit: int):
    """preexec_fn: files may grow to ``limit`` bytes; a write beyond fails with EFBIG instead of a signal."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return apply


# ---------------------------------------------------------------- the mechanism


def test_a_checked_file_takes_its_name_and_no_temporary_file_stays(tmp_path):
    seen = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_text("whole")

    final = atomic_files.write_file(tmp_path / "deep" / "out.txt", write, lambda tmp: seen.append(tmp.read_text()))
    assert final.read_text() == "whole" and seen[1] == "whole"
    assert seen[0] == tmp_path / "deep" / f"out.txt.{os.getpid()}.partial" and _leftovers(tmp_path) == []


def _fails_with_efbig(tmp: Path) -> None:
    tmp.write_bytes(b"half")
    raise OSError(27, "File too large", str(tmp))


def _writes_nothing(tmp: Path) -> None:
    pass


def _wrong_content(tmp: Path) -> None:
    tmp.write_bytes(b"truncated")


def _rejects(tmp: Path) -> None:
    raise OSError("it decodes to 3 frames, not 5")


def _crashes(tmp: Path) -> None:
    raise RuntimeError("encoder crashed")


@pytest.mark.parametrize(("write", "check", "reason"), [
    (_fails_with_efbig, None, "File too large"),
    (_writes_nothing, None, "the writer created no file"),
    (_wrong_content, _rejects, "it decodes to 3 frames, not 5"),
    (_crashes, None, "encoder crashed"),
])
def test_a_failed_write_or_check_names_the_path_and_keeps_what_was_there(tmp_path, write, check, reason):
    final = tmp_path / "report.json"
    final.write_text("the previous run's report")
    with pytest.raises(OSError, match="Cannot write") as error:
        atomic_files.write_file(final, write, check)
    assert str(final) in str(error.value) and reason in str(error.value) and ".partial" not in str(error.value)
    assert final.read_text() == "the previous run's report" and _leftovers(tmp_path) == []


def test_a_folder_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "blocker").write_text("a file where the folder should be")
    for write in (lambda p: write_png(p, _frames()[0]), lambda p: write_mp4(p, _frames()),
                  lambda p: atomic_files.write_text(p, "{}")):
        with pytest.raises(OSError, match="Cannot write") as error:
            write(tmp_path / "blocker" / "out" / "file.bin")
        assert str(tmp_path / "blocker" / "out" / "file.bin") in str(error.value)
    assert _leftovers(tmp_path) == []


def test_stale_temporary_files_of_ended_processes_are_removed_and_live_ones_kept(tmp_path, dead_pid):
    stale_file = tmp_path / f"clip.mp4.{dead_pid}.partial"
    stale_dir = tmp_path / f"lora.safetensors.{dead_pid}.partial"
    live = tmp_path / f"clip.mp4.{os.getpid()}.partial"  # a write still under way (this process)
    shared = tmp_path / "checkpoint-000004.partial"  # no owner in its name: only a shared clean removes it
    foreign = tmp_path / "download.partial"
    stale_file.write_bytes(b"half")
    stale_dir.mkdir()
    (stale_dir / "x").write_bytes(b"half")
    live.write_bytes(b"growing")
    shared.mkdir()
    foreign.write_bytes(b"a browser's")
    assert sorted(atomic_files.remove_stale(tmp_path)) == sorted([stale_file, stale_dir])
    assert live.exists() and shared.exists() and foreign.exists()
    assert sorted(atomic_files.remove_stale(tmp_path, shared=True)) == sorted([shared, foreign])
    assert live.exists() and atomic_files.remove_stale(tmp_path / "missing") == []


# ---------------------------------------------------------------- videos and images


@pytest.mark.parametrize(("count", "height", "width", "fps"), [(5, 32, 48, 8), (1, 64, 32, 24), (9, 48, 96, 7.5)])
def test_a_written_video_decodes_to_every_frame(tmp_path, count, height, width, fps):
    frames = _frames(count, height, width)
    path = write_mp4(tmp_path / "clip.mp4", frames, fps=fps)
    assert read_video(path).shape == (count, height, width, 3)
    reader = imageio_ffmpeg.read_frames(str(path))
    assert next(reader)["fps"] == pytest.approx(fps)
    reader.close()
    png = write_png(tmp_path / "first.png", frames[0])
    assert torch.equal((read_image(png)[0] * 255).round(), (frames[0] * 255).round())
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("fps", [-5, 0, 0.0, float("nan"), float("inf"), -float("inf"), True, "8"])
def test_a_video_with_an_impossible_frame_rate_is_refused_by_name(tmp_path, fps):
    with pytest.raises(ValueError, match=r"fps = .*finite number of frames per second above 0"):
        write_mp4(tmp_path / "clip.mp4", _frames(), fps=fps)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("height", "width"), [(33, 48), (32, 47)])
def test_an_encoder_failure_is_an_error_with_ffmpegs_reason(tmp_path, height, width):
    with pytest.raises(OSError, match=r"ffmpeg ended with status \d+ \(.*not divisible by 2") as error:
        write_mp4(tmp_path / "odd.mp4", _frames(5, height, width))
    assert str(tmp_path / "odd.mp4") in str(error.value) and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- every writer under a file-size limit

_WRITERS = r"""
import json, sys
from pathlib import Path
import torch
from easyanimate_core.atomic_files import write_text
from easyanimate_core.lora import LoraLayer, save_lora
from easyanimate_core.training.cache import DiskCache
from easyanimate_core.video import write_mp4, write_png

folder = Path(sys.argv[1])
frames = torch.rand(9, 64, 96, 3, generator=torch.Generator().manual_seed(0))
writers = {
    "clip.mp4": lambda p: write_mp4(p, frames),
    "frame.png": lambda p: write_png(p, frames[0]),
    "style.safetensors": lambda p: save_lora(p, {"proj_out": LoraLayer(torch.rand(4, 3072), torch.rand(64, 4), 4.)}),
    "dataset_report.json": lambda p: write_text(p, json.dumps(list(range(5000)))),
    "cache/latents/key.safetensors": lambda p: DiskCache(folder / "cache").save("latents", "key",
                                                                                {"mean": torch.rand(16, 2, 8, 8)}),
}
results = {}
for name, write in writers.items():
    try:
        results[name] = str(write(folder / name) or "written")
    except OSError as exc:
        results[name] = "OSError: " + str(exc)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def limited_writes(tmp_path_factory):
    """Every writer run once in a process whose files may not grow past 4 KiB (a full disk, as the writer sees it)."""
    folder = tmp_path_factory.mktemp("limited")
    (folder / "dataset_report.json").write_text("the previous report")
    done = subprocess.run([sys.executable, "-c", _WRITERS, str(folder)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, preexec_fn=_limited(4096), env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    return folder, json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", ["clip.mp4", "frame.png", "style.safetensors", "dataset_report.json",
                                  "cache/latents/key.safetensors"])
def test_every_writer_fails_whole_under_a_file_size_limit(limited_writes, name):
    folder, results = limited_writes
    assert results[name].startswith(f"OSError: Cannot write {folder / name}: ")
    assert "File too large" in results[name] or "File size limit exceeded" in results[name]
    if name == "dataset_report.json":
        assert (folder / name).read_text() == "the previous report"
    else:
        assert not (folder / name).exists()
    assert _leftovers(folder) == []


def test_the_same_writers_without_a_limit_write_readable_files(tmp_path):
    lora = save_lora(tmp_path / "style.safetensors", {"proj_out": LoraLayer(torch.rand(4, 3072), torch.rand(64, 4),
                                                                            4.0)})
    assert len(read_header(lora)) == 3
    cache = DiskCache(tmp_path / "cache")
    cache.save("latents", "key", {"mean": torch.ones(16, 2, 8, 8)})
    assert torch.equal(cache.load("latents", "key")["mean"], torch.ones(16, 2, 8, 8))
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------- the command line


def _generate(demo: Path, output: Path, limit: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "easyanimate_core", "generate", *SMALL, "--model", str(demo),
                             "--output", str(output)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_limited(limit), env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_a_full_disk_makes_the_command_line_fail_with_the_path_and_leave_no_partial_file(tmp_path, demo, capsys):
    whole = tmp_path / "whole" / "clip.mp4"
    assert main(["generate", *SMALL, "--model", str(demo), "--output", str(whole)]) == 0
    mp4, png = whole.stat().st_size, whole.with_suffix(".png").stat().st_size
    assert png > mp4 + 1  # the demo's 5 smooth frames compress below one PNG: a limit between them fails the PNG
    # cut in the frames; only the mp4's last bytes (its index) missing; the mp4 fits and the PNG does not
    for limit, failed in ((mp4 // 2, "clip.mp4"), (mp4 - 1, "clip.mp4"), (mp4 + 1, "clip.png")):
        output = tmp_path / f"limit-{limit}" / "clip.mp4"
        run = _generate(demo, output, limit)
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 1, (limit, stderr)
        assert f"Cannot write {output.with_name(failed)}: " in stderr
        assert "File too large" in stderr or "File size limit exceeded" in stderr
        assert "Traceback" not in stderr and "->" not in stdout  # no success line
        written = sorted(p.name for p in output.parent.iterdir())
        assert written == ([] if failed == "clip.mp4" else ["clip.mp4"])  # what stays is whole
        if written:
            assert read_video(output).shape == (5, 32, 48, 3)


def test_a_demo_model_that_cannot_be_written_is_an_error_not_a_traceback(tmp_path):
    output = tmp_path / "clip.mp4"
    run = subprocess.run([sys.executable, "-m", "easyanimate_core", "generate", *SMALL, "--output", str(output)],
                         cwd=REPO_ROOT, capture_output=True, text=True, preexec_fn=_limited(1500), timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path)))
    assert run.returncode == 1, run.stderr
    assert "Cannot write the demo model to " in run.stderr and "File too large" in run.stderr
    assert "Traceback" not in run.stderr and not output.exists()


@pytest.mark.parametrize("fps", ["-5", "0", "nan", "inf", "-inf", "eight"])
def test_the_command_line_refuses_an_impossible_frame_rate_before_any_work(tmp_path, demo, fps, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["generate", *SMALL, "--model", str(demo), f"--fps={fps}", "--output", str(tmp_path / "clip.mp4")])
    assert stop.value.code == 2
    assert f"argument --fps: {fps!r}: expected a finite number of frames per second above 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_names_an_output_it_cannot_write(tmp_path, demo, caplog, capsys):
    (tmp_path / "taken").write_text("a file where the output folder should be")
    output = tmp_path / "taken" / "clip.mp4"
    assert main(["generate", *SMALL, "--model", str(demo), "--output", str(output)]) == 1
    assert f"Cannot write {output}" in caplog.text and "->" not in capsys.readouterr().out


def test_a_new_run_removes_what_a_killed_run_left_in_its_output_folder(tmp_path, demo, dead_pid, capsys):
    stale = [tmp_path / f"clip.mp4.{dead_pid}.partial", tmp_path / f"clip.png.{dead_pid}.partial"]
    live = tmp_path / f"other.mp4.{os.getpid()}.partial"
    for path in (*stale, live, tmp_path / "notes.partial"):
        path.write_bytes(b"half")
    assert main(["generate", *SMALL, "--model", str(demo), "--fps", "12", "--output", str(tmp_path / "clip.mp4")]) == 0
    assert not any(p.exists() for p in stale) and live.exists() and (tmp_path / "notes.partial").exists()
    assert read_video(tmp_path / "clip.mp4").shape == (5, 32, 48, 3) and "-> " in capsys.readouterr().out


# ---------------------------------------------------------------- training: checkpoints and cache


def test_a_checkpoint_takes_its_name_only_when_whole(tmp_path):
    final = checkpoints.checkpoint_path(tmp_path, 4)
    tmp = checkpoints.begin(final)
    with pytest.raises(OSError, match=f"Cannot write the checkpoint {final}: its lora.safetensors is missing"):
        checkpoints.commit(final, {"step": 4})
    assert not final.exists()
    for value in (1.0, 2.0):  # the same step saved again after a resume replaces it whole
        tmp = checkpoints.begin(final)
        layer = LoraLayer(torch.full((2, 8), value), torch.ones(8, 2), 2.0)
        save_lora(tmp / checkpoints.LORA_FILE, {"proj_out": layer})
        checkpoint = checkpoints.commit(final, {"step": 4, "value": value})
        assert checkpoint.state()["value"] == value and not tmp.exists()
    assert [c.step for c in checkpoints.complete_checkpoints(tmp_path)] == [4] and _leftovers(tmp_path) == []


def test_the_next_training_run_removes_what_a_killed_one_left(tmp_path, demo, dead_pid):
    from test_training import TINY, write_dataset

    from easyanimate_core.training import TrainingConfig, train

    output, cache = tmp_path / "run", tmp_path / "cache"
    stale = [output / f"stripes.safetensors.{dead_pid}.partial", output / f"losses.csv.{dead_pid}.partial",
             output / "checkpoints" / "checkpoint-000002.partial", output / "validation" / f"step-1.mp4.{dead_pid}"
             ".partial", cache / "latents" / f"abc.safetensors.{dead_pid}.partial",
             cache / "text" / f"def.{dead_pid}.partial"]
    live = cache / "text" / f"ghi.safetensors.{os.getpid()}.partial"  # another run encoding into the shared cache
    foreign = output / "download.partial"  # not a name of ours: kept
    for path in (*stale, live, foreign):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    config = TrainingConfig(data=write_dataset(tmp_path / "data"), model=str(demo), output=output, name="stripes",
                            steps=1, rank=2, alpha=2.0, checkpoint_every=1, buckets=TINY, cache_dir=cache, seed=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest (see test_training.py)
    try:
        result = train(config)
    finally:
        torch.set_num_threads(threads)
    assert [p for p in stale if p.exists()] == [] and live.exists() and foreign.exists()
    assert result.lora_path.is_file() and len(read_header(result.lora_path)) > 0
    assert _leftovers(tmp_path) == sorted([foreign.name, live.name])
