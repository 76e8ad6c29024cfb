"""Every input is checked at the boundary, before a weight is read or a prompt encoded (issue 12): each rule is
tried with several inputs of its class, through the command line and through the nodes."""

from __future__ import annotations

import pytest
import torch

import easyanimate_core.loading as loading
import easyanimate_core.text_encoder as text_encoder
from easyanimate_core.__main__ import main

SMALL = ["--frames", "5", "--width", "48", "--height", "32", "--steps", "2", "--prompt", "a red ball"]


@pytest.fixture()
def weight_reads(monkeypatch):
    """Counts every tensor read from a weight file and every text encoder load."""
    calls = []
    real_read, real_encoder = loading.read_tensors, text_encoder.load_text_encoder

    def read_tensors(entries, **kwargs):
        calls.append("read_tensors")
        return real_read(entries, **kwargs)

    def load_text_encoder(*args, **kwargs):
        calls.append("load_text_encoder")
        return real_encoder(*args, **kwargs)

    monkeypatch.setattr(loading, "read_tensors", read_tensors)
    monkeypatch.setattr(text_encoder, "load_text_encoder", load_text_encoder)
    return calls


def _generate(tmp_path, *extra: str) -> int:
    return main(["generate", *SMALL, "--output", str(tmp_path / "x.mp4"), *extra])


# ----------------------------------------------------------------------------------------------- mode vs variant
@pytest.mark.parametrize("variant, extra, message", [
    ("t2v", ["--start-image", "{image}"], "i2v needs an InP model"),
    ("t2v", ["--control-video", "{video}"], "control needs a Control model"),
    ("inp", ["--camera", "Pan Up"], "camera needs a Control-Camera model"),
    ("camera", ["--control-video", "{video}"], "control needs a Control model"),
    ("control", [], "t2v needs EasyAnimateV5.1"),
])
def test_the_mode_is_checked_against_the_variant_before_any_weight_is_read(tmp_path, models, media, caplog,
                                                                            weight_reads, variant, extra, message):
    code = _generate(tmp_path, "--model", str(models[variant]), *(a.format(**media) for a in extra))
    assert code == 2
    assert message in caplog.text
    assert "Load the right model folder" in caplog.text
    assert weight_reads == []
    assert not (tmp_path / "x.mp4").exists()


def test_a_matching_variant_still_loads_and_runs(tmp_path, models, media, weight_reads, capsys):
    assert _generate(tmp_path, "--model", str(models["inp"]), "--start-image", media["image"]) == 0
    assert "load_text_encoder" in weight_reads and "read_tensors" in weight_reads


# ----------------------------------------------------------------------------------------- numbers, by name
@pytest.mark.parametrize("extra, message", [
    (["--guidance", "nan"], "guidance = nan is not a finite number"),
    (["--guidance", "inf"], "guidance = inf is not a finite number"),
    (["--guidance=-inf"], "guidance = -inf is not a finite number"),
    (["--guidance", "-2"], "guidance = -2.0: expected a finite number >= 0"),
    (["--guidance-rescale", "nan"], "guidance_rescale = nan"),
    (["--guidance-rescale", "1.5"], "guidance_rescale = 1.5: expected a finite number >= 0 and <= 1"),
    (["--strength", "nan"], "strength = nan is not a finite number"),
    (["--strength", "inf"], "strength = inf is not a finite number"),
    (["--strength", "0"], "strength = 0.0: expected a finite number > 0 and <= 1"),
    (["--strength", "1.5"], "strength = 1.5: expected a finite number > 0 and <= 1"),
    (["--cfg-skip-ratio", "nan"], "cfg_skip_ratio = nan is not a finite number"),
    (["--seed", "-1"], "seed = -1: expected an integer from 0 to 18446744073709551615"),
    (["--seed", str(2**64)], "seed = 18446744073709551616: expected an integer from 0"),
    (["--steps", "0"], "steps = 0: expected an integer from 1 up"),
    (["--teacache", "nan"], "TeaCache threshold = nan is not a finite number"),
    (["--teacache", "inf"], "TeaCache threshold = inf is not a finite number"),
])
def test_bad_numbers_are_refused_by_name_before_any_file_is_read(tmp_path, models, caplog, weight_reads,
                                                                 monkeypatch, extra, message):
    import easyanimate_core.video as video

    media_reads = []
    monkeypatch.setattr(video, "read_video", lambda *a, **k: media_reads.append(a))
    code = _generate(tmp_path, "--model", str(models["inp"]), "--input-video", "input.mp4", *extra)
    assert code == 2
    assert message in caplog.text
    assert weight_reads == [] and media_reads == []
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("seed", [0, 2**64 - 1])
def test_the_ends_of_the_seed_range_are_accepted(seed):
    from easyanimate_core.generation import GenerationRequest

    assert GenerationRequest(width=48, height=32, frames=5, seed=seed).checked().seed == seed


# --------------------------------------------------------------------------------------------- absurd sizes
@pytest.mark.parametrize("extra, message", [
    (["--width", "100000"], r"100000x32 with 5 frames would need at least [\d,.]+ GiB .*a side over 16384 pixels"),
    (["--height", "100000", "--width", "100000"], r"100000x100000 with 5 frames would need at least [\d,]+\.\d GiB"),
    (["--width", "16384", "--height", "16384", "--frames", "49"],
     r"16384x16384 with 49 frames would need at least [\d,.]+ GiB .*more than this machine's [\d.]+ GiB"),
    (["--width", "1024", "--height", "1024", "--frames", "400001"],
     r"1024x1024 with 400001 frames would need .*more than this machine's"),
])
def test_absurd_sizes_are_refused_with_the_memory_they_would_need(tmp_path, models, caplog, weight_reads, extra,
                                                                  message):
    import re

    code = _generate(tmp_path, "--model", str(models["t2v"]), *extra)
    assert code == 2
    assert re.search(message, caplog.text), caplog.text
    assert "decoded video in float32" in caplog.text and "pick a size and frame count" in caplog.text
    assert weight_reads == []


def test_the_memory_estimate_grows_with_the_video_and_the_trained_sizes_pass():
    from easyanimate_core.checks import check_workload, workload_bytes

    small, large = sum(workload_bytes(672, 384, 49)), sum(workload_bytes(1344, 768, 49))
    assert 3.5 * small < large < 4.5 * small
    for width, height, frames in ((672, 384, 49), (1024, 1024, 49), (512, 512, 1)):
        check_workload(width, height, frames)


# ---------------------------------------------------------------------------------------------------- LoRAs
def _meta_transformer(num_layers, mmdit_layers, **fields):
    from easyanimate_core.config import TransformerConfig
    from easyanimate_core.transformer import EasyAnimateTransformer

    with torch.device("meta"):
        return EasyAnimateTransformer(TransformerConfig(num_layers=num_layers, mmdit_layers=mmdit_layers, **fields))


@pytest.fixture(scope="module")
def published():
    """The 7B and 12B transformers, built on the meta device (no memory): the LoRA checks only read their layout."""
    return {"7B": _meta_transformer(36, 18), "12B": _meta_transformer(48, 48)}


def _lora_for(model, path, pattern, rank=1):
    """A LoRA file (official format) for the linears of ``model`` whose names match ``pattern``."""
    import re

    from easyanimate_core.lora import LoraLayer, save_lora

    gen = torch.Generator().manual_seed(0)
    layers = {name: LoraLayer(torch.randn(rank, m.in_features, generator=gen) * 0.01,
                              torch.randn(m.out_features, rank, generator=gen) * 0.01, float(rank))
              for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(pattern, name)}
    assert layers
    return save_lora(path, layers)


@pytest.mark.parametrize("trained, target, pattern, message", [
    ("7B", "12B", r"transformer_blocks\.\d+\.attn[12]\.to_q",
     r"text-stream layers \(attn2, txt_ff\) in blocks 0-17 only.*18 MMDiT blocks \(the 7B has 18\).*"
     r"12B .* 48 blocks .*pick a LoRA trained for the 12B model"),
    ("7B", "12B", r"transformer_blocks\.\d+\.attn1\.to_q",
     r"covers blocks 0-35, every block of the 7B \(36 blocks\).*pick a LoRA trained for the 12B model"),
    ("12B", "7B", r"transformer_blocks\.\d+\.attn1\.to_q",
     r"layers for blocks up to 47.*at least 48 blocks \(the 12B has 48\).*pick a LoRA trained for the 7B model"),
    ("12B", "7B", r"transformer_blocks\.(\d|[12]\d|3[0-5])\.attn2\.to_k",
     r"text-stream layers \(attn2, txt_ff\) in block 35.*pick a LoRA trained for the 7B model"),
])
def test_a_lora_of_the_other_published_size_is_recognised_by_its_blocks(tmp_path, published, trained, target,
                                                                         pattern, message):
    from easyanimate_core.loading import ModelFormatError
    from easyanimate_core.lora import read_lora

    path = _lora_for(published[trained], tmp_path / f"{trained}.safetensors", pattern)
    with pytest.raises(ModelFormatError, match=message):
        read_lora(path, published[target])
    assert read_lora(path, published[trained]).layers  # and it fits the model it was trained for


@pytest.mark.parametrize("pattern", [r"transformer_blocks\.[0-9]\.attn1\.to_q",  # blocks 0-9 of the 12B only
                                     r"transformer_blocks\.\d+\.attn1\.to_(q|k)", r"proj_out"])
def test_loras_that_fit_are_not_refused(tmp_path, published, pattern):
    from easyanimate_core.lora import read_lora

    path = _lora_for(published["12B"], tmp_path / "fits.safetensors", pattern)
    assert read_lora(path, published["12B"]).layers


def test_the_block_rule_holds_for_any_depth_not_only_the_published_ones(tmp_path):
    from easyanimate_core.loading import ModelFormatError
    from easyanimate_core.lora import read_lora

    tiny = dict(num_attention_heads=2, attention_head_dim=16, time_embed_dim=32, text_embed_dim=32)
    shallow, deep = _meta_transformer(4, 2, **tiny), _meta_transformer(4, 4, **tiny)
    path = _lora_for(shallow, tmp_path / "shallow.safetensors", r".*attn[12]\.to_v")
    with pytest.raises(ModelFormatError, match="blocks 0-1 only.*2 MMDiT blocks"):
        read_lora(path, deep)
    path = _lora_for(deep, tmp_path / "deep.safetensors", r".*attn2\.to_v")
    with pytest.raises(ModelFormatError, match="text-stream layers .* in block 3"):
        read_lora(path, shallow)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("part", ["lora_down.weight", "lora_up.weight", "alpha"])
def test_a_lora_whose_tensors_are_not_finite_is_refused(tmp_path, published, bad, part):
    from safetensors.torch import load_file, save_file

    from easyanimate_core.loading import ModelFormatError
    from easyanimate_core.lora import read_lora

    path = _lora_for(published["12B"], tmp_path / "bad.safetensors", r"transformer_blocks\.3\.ff\.net\.2")
    state = load_file(path)
    key = f"lora_unet__transformer_blocks_3_ff_net_2.{part}"
    state[key] = state[key].clone().reshape(-1)
    state[key][0] = bad
    state[key] = state[key].reshape(load_file(path)[key].shape)
    save_file(state, path)
    with pytest.raises(ModelFormatError, match=f"tensor '{key}' holds 1 NaN or infinite values.*damaged"):
        read_lora(path, published["12B"])


@pytest.mark.parametrize("down_rank, up_rank", [(4, 3), (1, 8), (16, 4)])
def test_a_rank_mismatch_between_down_and_up_names_itself(tmp_path, published, down_rank, up_rank):
    from safetensors.torch import save_file

    from easyanimate_core.loading import ModelFormatError
    from easyanimate_core.lora import read_lora

    stem = "lora_unet__transformer_blocks_0_attn1_to_q"
    save_file({f"{stem}.lora_down.weight": torch.zeros(down_rank, 3072),
               f"{stem}.lora_up.weight": torch.zeros(3072, up_rank)}, tmp_path / "ranks.safetensors")
    with pytest.raises(ModelFormatError, match=rf"down matrix \({down_rank}, 3072\) and an up matrix "
                                               rf"\(3072, {up_rank}\): their ranks do not match"):
        read_lora(tmp_path / "ranks.safetensors", published["12B"])


@pytest.mark.parametrize("strength", [float("nan"), float("inf"), float("-inf"), "1.0", True])
def test_a_lora_strength_that_is_no_finite_number_is_refused_before_any_hook(tmp_path, strength):
    from easyanimate_core.demo import demo_transformer_config
    from easyanimate_core.lora import applied, read_lora
    from easyanimate_core.transformer import EasyAnimateTransformer

    model = EasyAnimateTransformer(demo_transformer_config("t2v"))
    lora = read_lora(_lora_for(model, tmp_path / "s.safetensors", r".*attn1\.to_q"), model)
    with pytest.raises(ValueError, match="strength of the LoRA .*s.safetensors = "):
        with applied(model, [(lora, 1.0), (lora, strength)]):
            pass
    assert all(not m._forward_hooks for m in model.modules())


# --------------------------------------------------------------------------------------- camera paths, pose files
@pytest.mark.parametrize("extra, message", [
    (["--camera", ""], "camera combination '' names no preset"),
    (["--camera", " + "], "camera combination ' + ' names no preset"),
    (["--camera", "Pan Up++Pan Left"], "camera combination 'Pan Up++Pan Left' has an empty name between '+' signs"),
    (["--camera", "Pan Up+"], "has an empty name between '+' signs"),
    (["--camera", "Pan Up+Spin"], "Unknown camera preset 'Spin'"),
    (["--camera-file", ""], "No camera pose file given (the path is empty)"),
    (["--camera-file", " "], "No camera pose file given (the path is empty)"),
    (["--camera-file", "{folder}"], "is a folder: give the path of a pose file (.txt) inside it"),
    (["--camera-file", "{folder}/missing.txt"], "missing.txt does not exist"),
    (["--camera", "Pan Up", "--camera-file", "{folder}/poses.txt"], "give either --camera or --camera-file"),
])
def test_camera_inputs_are_refused_by_name_before_any_weight_is_read(tmp_path, models, media, caplog, weight_reads,
                                                                     extra, message):
    extra = [a.format(folder=tmp_path) for a in extra]
    code = _generate(tmp_path, "--model", str(models["camera"]), "--reference-image", media["image"], *extra)
    assert code == 2
    assert message in caplog.text
    assert weight_reads == []


@pytest.mark.parametrize("poses, frames", [(49, 25), (49, 5), (5, 9), (13, 13)])
def test_a_camera_path_of_another_length_is_resampled_over_the_whole_motion_never_cut(caplog, poses, frames):
    from easyanimate_core.camera import preset_path
    from easyanimate_core.generation import GenerationRequest

    path = preset_path("Pan Left", poses)
    request = GenerationRequest(width=48, height=32, frames=frames, camera=path).checked()
    assert len(request.camera) == frames
    assert torch.allclose(request.camera.w2c()[0], path.w2c()[0])
    assert torch.allclose(request.camera.w2c()[-1], path.w2c()[-1], atol=1e-6)  # the end of the motion is kept
    resampled = f"The camera path has {poses} poses and the video {frames} frames: resampled to {frames}"
    assert (resampled in caplog.text) == (poses != frames)


# ---------------------------------------------------------------------------------------------------- trajectories
@pytest.mark.parametrize("point", [{"x": -25, "y": 10}, {"x": 625, "y": 10}, {"x": 10, "y": 407},
                                   {"x": 10, "y": -24.5}, {"x": 1e9, "y": 1e9}])
def test_pixel_points_whose_blob_misses_the_canvas_are_refused_by_point(point):
    import json

    from easyanimate_core.trajectory import parse_trajectory

    track = [{"x": -24, "y": 0}, {"x": 624, "y": 406}, point]  # 24: the blob's half size on this canvas
    with pytest.raises(ValueError, match=r"trajectory, point 3: expected a point on the 600x382 canvas \(x in "
                                         r"-24\.\.624, y in -24\.\.406: the blob of a point farther out draws"):
        parse_trajectory(json.dumps(track), canvas_size=(600, 382))
    with pytest.raises(ValueError, match=r"trajectory, track 2, point 3: expected a point on the"):
        parse_trajectory([track[:2], track], canvas_size=(600, 382))
    assert len(parse_trajectory(json.dumps(track[:2]), canvas_size=(600, 382)).tracks[0]) == 2  # edges are inside


@pytest.mark.parametrize("value", [
    "[" * 100_000 + "]" * 100_000,
    '{"version": 1, "tracks": ' + "[" * 50_000 + "]" * 50_000 + "}",
    ['["[{\\"x\\": 1, \\"y\\": 2}]", "[{\\"x\\": 1, \\"y\\": 2}]"]'],
    ["[" * 100_000 + "]" * 100_000],
])
def test_absurdly_nested_trajectories_are_refused_without_a_recursion_error(value):
    from easyanimate_core.trajectory import parse_trajectory

    with pytest.raises(ValueError, match="nested too deeply"):
        parse_trajectory(value, canvas_size=(48, 32))


def test_deeply_nested_python_lists_are_refused_as_a_value_error():
    from easyanimate_core.trajectory import parse_trajectory

    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="trajectory, track 1, point 1: expected"):
        parse_trajectory([[deep]], canvas_size=(48, 32))


@pytest.mark.parametrize("text, message", [
    ("", "trajectory: empty; draw a trajectory"),
    ("  ", "trajectory: empty"),
    ('[{"x": 60, "y": 10}]', "trajectory, point 1: expected a point on the 48x32 canvas"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_the_command_line_refuses_bad_trajectories_before_any_weight_is_read(tmp_path, models, media, caplog,
                                                                             weight_reads, text, message):
    code = _generate(tmp_path, "--model", str(models["control"]), "--reference-image", media["image"],
                     "--trajectory", text)
    assert code == 2
    assert message in caplog.text
    assert weight_reads == []


# ------------------------------------------------------------------------------------------ config value types
def _edited_copy(model, tmp_path, file, section, key, value):
    import json
    import shutil

    folder = shutil.copytree(model, tmp_path / "edited")
    path = folder / file
    config = json.loads(path.read_text())
    (config[section] if section else config)[key] = value
    path.write_text(json.dumps(config))  # NaN and Infinity as Python's json writes them
    return folder, path


@pytest.mark.parametrize("file, section, key, value, expected", [
    ("transformer/config.json", None, "add_norm_text_encoder", "false", "expected true or false (a JSON boolean"),
    ("transformer/config.json", None, "after_norm", "true", "expected true or false (a JSON boolean"),
    ("transformer/config.json", None, "flip_sin_to_cos", 1, "expected true or false"),
    ("transformer/config.json", None, "num_layers", "2", "expected an integer >= 1"),
    ("transformer/config.json", None, "norm_eps", float("nan"), "expected a positive finite number"),
    ("vae/config.json", None, "spatial_group_norm", "false", "expected true or false (a JSON boolean"),
    ("vae/config.json", None, "scaling_factor", float("inf"), "expected a positive finite number"),
    ("scheduler/scheduler_config.json", None, "use_dynamic_shifting", "false",
     "expected true or false (a JSON boolean"),
    ("scheduler/scheduler_config.json", None, "shift", float("nan"), "expected a positive finite number"),
    ("scheduler/scheduler_config.json", None, "num_train_timesteps", True, "expected an integer >= 2"),
])
def test_config_values_of_the_wrong_type_are_refused_naming_the_file_and_key(tmp_path, models, caplog, weight_reads,
                                                                            file, section, key, value, expected):
    folder, path = _edited_copy(models["t2v"], tmp_path, file, section, key, value)
    assert _generate(tmp_path, "--model", str(folder)) == 2
    assert any(f"{key}{quote} = {value!r}" in caplog.text for quote in ("", "'"))
    assert str(path) in caplog.text and expected in caplog.text
    assert weight_reads == []


@pytest.mark.parametrize("key, value, cause", [
    ("hidden_size", "abc", "StrictDataclassFieldValidationError"),
    ("num_hidden_layers", "3", "StrictDataclassFieldValidationError"),
    ("vocab_size", None, "StrictDataclassFieldValidationError"),
    ("num_attention_heads", 0, "ZeroDivisionError"),
    ("num_attention_heads", 3, "hidden_size must be divisible by num_heads"),
    ("hidden_act", "nope", "KeyError: 'nope'"),
])
def test_text_encoder_config_errors_from_transformers_are_retold_with_the_path(tmp_path, models, caplog,
                                                                                weight_reads, key, value, cause):
    folder, path = _edited_copy(models["t2v"], tmp_path, "text_encoder/config.json", "text_config", key, value)
    assert _generate(tmp_path, "--model", str(folder)) == 2
    assert f"The text encoder config {path} is not a Qwen2-VL config that transformers can use" in caplog.text
    assert cause in caplog.text and "Download text_encoder/config.json again" in caplog.text
    assert weight_reads == []


# ----------------------------------------------------------------------------------------- safetensors dtypes
def _raw_safetensors(path, dtype: str, nbytes: int = 8, name: str = "weight"):
    import json
    import struct

    header = json.dumps({name: {"dtype": dtype, "shape": [2], "data_offsets": [0, nbytes]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(nbytes))
    return path


@pytest.mark.parametrize("dtype", ["U16", "U32", "U64", "F8_E8M0", "F4", "C64"])
def test_valid_but_unsupported_safetensors_dtypes_are_named_not_called_corrupt(tmp_path, dtype):
    from easyanimate_core.safetensors_io import UnsupportedDtypeError, read_header

    path = _raw_safetensors(tmp_path / "w.safetensors", dtype)
    with pytest.raises(UnsupportedDtypeError, match=f"tensor 'weight' is stored as {dtype}, a valid safetensors "
                                                    f"dtype that this loader does not read .*not corrupt") as error:
        read_header(path)
    assert "truncated" not in str(error.value)


def test_a_dtype_safetensors_does_not_define_is_still_corrupt(tmp_path):
    from easyanimate_core.safetensors_io import CorruptWeightsError, UnsupportedDtypeError, read_header

    with pytest.raises(CorruptWeightsError, match="dtype 'X99', which safetensors does not define") as error:
        read_header(_raw_safetensors(tmp_path / "w.safetensors", "X99"))
    assert not isinstance(error.value, UnsupportedDtypeError)


@pytest.mark.parametrize("dtype", ["U32", "F8_E8M0"])
def test_an_unsupported_dtype_in_a_model_folder_is_named_before_any_weight_is_read(tmp_path, models, caplog,
                                                                                    weight_reads, dtype):
    import shutil

    folder = shutil.copytree(models["t2v"], tmp_path / "model")
    _raw_safetensors(folder / "transformer" / "extra.safetensors", dtype)
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").rename(folder / "transformer" / "a.safetensors")
    assert _generate(tmp_path, "--model", str(folder)) == 2
    assert f"extra.safetensors: tensor 'weight' is stored as {dtype}, a valid safetensors dtype" in caplog.text
    assert weight_reads == []


def test_an_unsupported_dtype_in_a_lora_is_named(tmp_path, published):
    from easyanimate_core.lora import read_lora
    from easyanimate_core.safetensors_io import UnsupportedDtypeError

    path = _raw_safetensors(tmp_path / "lora.safetensors", "U16",
                            name="lora_unet__transformer_blocks_0_attn1_to_q.lora_down.weight")
    with pytest.raises(UnsupportedDtypeError, match="is stored as U16"):
        read_lora(path, published["12B"])


# ------------------------------------------------------------------------- camera intrinsics, training numbers
@pytest.mark.parametrize("key, value, message", [
    ("fx", float("nan"), "fx = nan is not a finite number"), ("fy", float("inf"), "fy = inf is not a finite"),
    ("fx", 0.0, "fx = 0.0: expected a finite number > 0"), ("cx", float("-inf"), "cx = -inf is not a finite"),
    ("speed", float("nan"), "speed must be a finite number"),
])
def test_camera_preset_numbers_are_refused_by_name(key, value, message):
    from easyanimate_core.camera import preset_path

    with pytest.raises(ValueError, match=message):
        preset_path("Pan Up", 5, **{key: value})


@pytest.mark.parametrize("flag, value, message", [
    ("--learning-rate", "nan", "learning_rate = nan is not a finite number"),
    ("--learning-rate", "inf", "learning_rate = inf is not a finite number"),
    ("--learning-rate", "0", "learning_rate = 0.0: expected a finite number > 0"),
    ("--alpha", "inf", "alpha = inf is not a finite number"),
    ("--max-grad-norm", "nan", "max_grad_norm = nan is not a finite number"),
    ("--validation-guidance", "nan", "validation_guidance = nan is not a finite number"),
    ("--seed", "-3", "seed = -3: expected an integer from 0"),
])
def test_training_numbers_are_refused_by_name_before_any_weight_is_read(tmp_path, models, caplog, weight_reads,
                                                                        flag, value, message):
    metadata = tmp_path / "metadata.json"
    metadata.write_text("[]")
    code = main(["train-lora", "--data", str(metadata), "--model", str(models["t2v"]), "--output",
                 str(tmp_path / "out"), "--steps", "2", f"{flag}={value}"])
    assert code == 2
    assert message in caplog.text
    assert weight_reads == []
