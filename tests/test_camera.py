"""Camera paths: preset directions, combine/join/resample, pose files, Plucker embedding, control channels."""

from __future__ import annotations

import json
import math

import pytest
import torch

from easyanimate_core import camera
from easyanimate_core.camera import CameraPath

UP, DOWN, LEFT, RIGHT, FORWARD, BACK = (0, -1, 0), (0, 1, 0), (-1, 0, 0), (1, 0, 0), (0, 0, 1), (0, 0, -1)
N = 49

# preset -> (direction of the camera centre's move or None if it stays, direction the view turns or None)
DIRECTIONS = {
    "Static": (None, None),
    "Pan Up": (UP, None),
    "Pan Down": (DOWN, None),
    "Pan Left": (LEFT, None),
    "Pan Right": (RIGHT, None),
    "Zoom In": (FORWARD, None),
    "Zoom Out": (BACK, None),
    "ACW": (None, None),
    "CW": (None, None),
    "Orbit Left": (LEFT, RIGHT),
    "Orbit Right": (RIGHT, LEFT),
    "Tilt Up": (None, UP),
    "Tilt Down": (None, DOWN),
    "Yaw Left": (None, LEFT),
    "Yaw Right": (None, RIGHT),
}

REFERENCE_PRESETS = {  # aigc-apps/EasyAnimate comfyui/utils.py
    "Static": ([0, 0, 0], [0, 0, 0]),
    "Pan Up": ([0, 0, 0], [0, 1, 0]),
    "Pan Down": ([0, 0, 0], [0, -1, 0]),
    "Pan Left": ([0, 0, 0], [1, 0, 0]),
    "Pan Right": ([0, 0, 0], [-1, 0, 0]),
    "Zoom In": ([0, 0, 0], [0, 0, -2]),
    "Zoom Out": ([0, 0, 0], [0, 0, 2]),
    "ACW": ([0, 0, 1], [0, 0, 0]),
    "CW": ([0, 0, -1], [0, 0, 0]),
}


def _rx(a):
    return torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=torch.float64)


def _ry(a):
    return torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=torch.float64)


def _rz(a):
    return torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], dtype=torch.float64)


def _assert_direction(vector, expected, what):
    if expected is None:
        torch.testing.assert_close(vector, torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0, msg=what)
        return
    expected = torch.tensor(expected, dtype=torch.float64)
    along = (vector @ expected).item()
    # Turning and orbiting also change the forward (z) component a little; the named axis must dominate.
    assert along > 0.3 and along >= 0.9 * vector.abs().max(), f"{what}: {vector.tolist()}, expected {expected.tolist()}"


def test_presets_file_has_reference_values_and_new_motions():
    presets = camera.load_presets()
    assert list(presets) == list(DIRECTIONS)
    for name, (angle, translation) in REFERENCE_PRESETS.items():
        assert presets[name].angle == tuple(angle) and presets[name].translation == tuple(translation), name
        assert presets[name].pivot_distance == 0
    assert camera.preset_names() == list(DIRECTIONS)


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_each_preset_moves_in_its_documented_direction(name):
    path = camera.preset_path(name, N)
    moved, turned = DIRECTIONS[name]
    centres, views = path.centers(), path.view_directions()
    _assert_direction(centres[-1] - centres[0], moved, f"{name} centre")
    _assert_direction(views[-1] - views[0], turned, f"{name} view")
    torch.testing.assert_close(path.w2c()[0], torch.eye(3, 4, dtype=torch.float64), atol=0, rtol=0)


def test_rolls_turn_the_camera_right_axis_the_documented_way():
    # The camera's right axis in world coordinates is the first row of R; -y is up.
    assert camera.preset_path("ACW", N).w2c()[-1, 0, 1] < -0.5  # right side rises
    assert camera.preset_path("CW", N).w2c()[-1, 0, 1] > 0.5
    # A point to the right of centre moves down the picture under ACW: the picture turns clockwise.
    w2c = camera.preset_path("ACW", N).w2c()[-1]
    assert (w2c[:, :3] @ torch.tensor([1.0, 0, 5], dtype=torch.float64) + w2c[:, 3])[1] > 0


def test_orbit_keeps_the_pivot_centred_at_constant_distance():
    path = camera.preset_path("Orbit Left", N, speed=1.7)
    pivot = torch.tensor([0, 0, 3.0], dtype=torch.float64)
    w2c = path.w2c()
    in_camera = (w2c[:, :, :3] @ pivot) + w2c[:, :, 3]
    torch.testing.assert_close(in_camera, pivot.expand(N, 3), atol=1e-12, rtol=0)
    torch.testing.assert_close((path.centers() - pivot).norm(dim=1), torch.full((N,), 3.0, dtype=torch.float64))


def test_pan_up_matches_the_reference_asset_file():
    # asset/Pan_Up.txt: 49 poses, t_y = 1.5 * i / 49 printed with 9 decimals.
    t_y = camera.preset_path("Pan Up", N).w2c()[:, 1, 3]
    torch.testing.assert_close(t_y, 1.5 * torch.arange(N, dtype=torch.float64) / N, atol=1e-15, rtol=0)
    assert abs(t_y[1].item() - 0.030612245) < 1e-9 and abs(t_y[48].item() - 1.469387755) < 1e-9


def test_rotation_order_speed_and_intrinsics():
    path = camera.combine("Tilt Up", "Yaw Left", "ACW", frames=10, speed=2.0, fx=0.6, fy=0.9, cx=0.4, cy=0.55)
    i, n, s = 7, 10, 2.0
    ax, ay, az = (i / n * s * math.pi / 3 * a for a in (-0.5, 0.5, 1.0))
    torch.testing.assert_close(path.w2c()[i, :, :3], _rz(az) @ _ry(ay) @ _rx(ax), atol=1e-15, rtol=0)
    assert path.intrinsics == ((0.6, 0.9, 0.4, 0.55),) * 10
    assert camera.preset_path("Static", 3).intrinsics[0] == (0.474812461, 0.844111024, 0.5, 0.5)
    assert camera.V51_WORKFLOW_INTRINSICS[:2] == (0.532139961, 0.946026558)


def test_combine_pan_up_and_pan_left_moves_diagonally():
    path = camera.combine("Pan Up", "Pan Left", frames=N)
    step = path.centers()[-1] - path.centers()[0]
    expected = 1.5 * (N - 1) / N
    torch.testing.assert_close(step, torch.tensor([-expected, -expected, 0.0], dtype=torch.float64))
    from_paths = camera.combine(camera.preset_path("Pan Up", N), "Pan Left")
    torch.testing.assert_close(from_paths.w2c(), path.w2c(), atol=1e-15, rtol=0)
    with pytest.raises(ValueError, match="same length"):
        camera.combine(camera.preset_path("Pan Up", 5), camera.preset_path("Pan Up", 6))
    with pytest.raises(ValueError, match="frames"):
        camera.combine("Pan Up", "Pan Left")
    with pytest.raises(ValueError, match="Unknown camera preset 'Pan Sideways'"):
        camera.preset_path("Pan Sideways", 5)


def test_join_is_pure_exact_length_and_composes_like_the_reference():
    first, second = camera.preset_path("Yaw Left", 20), camera.preset_path("Pan Left", 29)
    before = (first.poses, first.intrinsics, second.poses, second.intrinsics)
    joined = camera.join(first, second)
    assert (first.poses, first.intrinsics, second.poses, second.intrinsics) == before
    assert len(joined) == 49 and joined[:20] == first
    assert joined.poses[20] == first.poses[-1]  # the second path starts from the identity
    r0, t0 = first.w2c()[-1, :, :3], first.w2c()[-1, :, 3]
    r1, t1 = second.w2c()[10, :, :3], second.w2c()[10, :, 3]
    torch.testing.assert_close(joined.w2c()[30, :, :3], r1 @ r0, atol=1e-15, rtol=0)
    torch.testing.assert_close(joined.w2c()[30, :, 3], t1 + r1 @ t0, atol=1e-15, rtol=0)
    # After turning left, "Pan Left" slides along the turned camera's own left axis (minus its first row of R).
    step = joined.centers()[-1] - joined.centers()[20]
    _assert_direction(step, (-r0[0]).tolist(), "pan after yaw")
    assert len(camera.join_to_length([first, second, first], 49)) == 49


def test_with_speed_and_resample():
    for name in ("Yaw Left", "Pan Up", "ACW", "Zoom Out"):
        torch.testing.assert_close(camera.with_speed(camera.preset_path(name, 12), 2.5).w2c(),
                                   camera.preset_path(name, 12, speed=2.5).w2c(), atol=1e-12, rtol=0)
    yaw = camera.preset_path("Yaw Left", 9)
    assert camera.resample(yaw, 9) == yaw
    for mode in ("linear", "slerp"):
        assert len(camera.resample(yaw, 1, mode)) == 1
    slerped = camera.resample(yaw, 17, "slerp").w2c()  # half-way frames between poses 0..8
    halfway = _ry(3.5 / 9 * math.pi / 3 * 0.5)
    torch.testing.assert_close(slerped[7, :, :3], halfway, atol=1e-12, rtol=0)
    linear = camera.resample(yaw, 17, "linear").w2c()  # element-wise, as training interpolates the pose rows
    torch.testing.assert_close(linear[7], (yaw.w2c()[3] + yaw.w2c()[4]) / 2, atol=1e-15, rtol=0)
    pan = camera.resample(camera.preset_path("Pan Up", N), 97).w2c()
    torch.testing.assert_close(pan[:, 1, 3], 1.5 * torch.arange(97, dtype=torch.float64) / 2 / N, atol=1e-12, rtol=0)


def test_pose_file_round_trips_exactly(tmp_path):
    path = camera.join(camera.combine("Orbit Left", "Tilt Down", frames=7, fx=0.123456789012345),
                       camera.preset_path("Zoom In", 5, speed=0.3))
    path = CameraPath(path.poses, path.intrinsics, tuple(float(33366 * i + 1) for i in range(12)))
    target = camera.write_pose_file(tmp_path / "poses.txt", path)
    assert camera.read_pose_file(target) == path
    lines = target.read_text().splitlines()
    assert len(lines) == 13 and all(len(line.split()) == 19 for line in lines[1:])


def test_reads_reference_format_and_skips_the_first_line(tmp_path):
    text = ("https://www.youtube.com/watch?v=x\n"
            "0 0.532139961 0.946026558 0.500000000 0.500000000 0.000000000 0.000000000 1.000000000 0.000000000 "
            "0.000000000 0.000000000 0.000000000 1.000000000 0.000000000 0.030612245 0.000000000 0.000000000 "
            "1.000000000 0.000000000\n\n")
    (tmp_path / "p.txt").write_text(text)
    path = camera.read_pose_file(tmp_path / "p.txt")
    assert len(path) == 1 and path.intrinsics[0] == (0.532139961, 0.946026558, 0.5, 0.5)
    assert path.poses[0][7] == 0.030612245


GOOD_LINE = "0 0.5 0.9 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0"


@pytest.mark.parametrize("bad_line, message", [
    (" ".join(GOOD_LINE.split()[:11] + ["abc"] + GOOD_LINE.split()[12:]), "line 7, column 12: 'abc' is not a number"),
    (" ".join(GOOD_LINE.split()[:17]), "line 7 has 17 values, expected 19"),
    (GOOD_LINE.replace("0.9", "nan"), "line 7, column 3: 'nan' is not a finite number"),
    (GOOD_LINE.replace("0.9", "-0.9"), "line 7: fx and fy must be positive"),
    ("0 0.5 0.9 0.5 0.5 0 0 " + " ".join(["0"] * 12), "line 7: the rotation part"),
])
def test_malformed_pose_files_name_line_and_column(tmp_path, bad_line, message):
    target = tmp_path / "poses.txt"
    target.write_text("\n".join(["url", *[GOOD_LINE] * 5, bad_line, GOOD_LINE]) + "\n")
    with pytest.raises(ValueError) as caught:
        camera.read_pose_file(target)
    assert message in str(caught.value) and "poses.txt" in str(caught.value)


def test_pose_file_without_poses_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_text("https://example.com\n\n")
    with pytest.raises(ValueError, match="empty.txt has no poses"):
        camera.read_pose_file(tmp_path / "empty.txt")


def _write_presets(tmp_path, presets, **top):
    target = tmp_path / "bad_presets.json"
    target.write_text(json.dumps({"format_version": 1, "presets": presets, **top}))
    return target


@pytest.mark.parametrize("entry, field", [
    ({"angle": [0, 0], "translation": [0, 0, 0]}, "angle"),
    ({"angle": [0, 0, 0], "translation": [0, "up", 0]}, "translation"),
    ({"angle": [0, 0, 0]}, "translation"),
    ({"angle": [0, 0, True], "translation": [0, 0, 0]}, "angle"),
    ({"angle": [0, 0, 0], "translation": [0, 0, 0], "pivot_distance": -1}, "pivot_distance"),
    ({"angle": [0, 0, 0], "translation": [0, 0, 0], "rotation": [1, 0, 0]}, "rotation"),
    ({"angle": [0, 0, 0], "translation": [0, 0, 0], "description": 3}, "description"),
])
def test_presets_validation_names_file_preset_and_field(tmp_path, entry, field):
    target = _write_presets(tmp_path, {"Good": {"angle": [0, 0, 0], "translation": [0, 0, 0]}, "Broken": entry})
    with pytest.raises(ValueError) as caught:
        camera.load_presets(target)
    text = str(caught.value)
    assert "bad_presets.json" in text and "preset 'Broken'" in text and f"field '{field}'" in text


def test_presets_file_structure_errors(tmp_path):
    target = tmp_path / "dup.json"
    target.write_text('{"format_version": 1, "presets": {"A": {"angle": [0,0,0], "translation": [0,0,0]}, '
                      '"A": {"angle": [0,0,0], "translation": [0,0,0]}}}')
    with pytest.raises(ValueError, match=r"dup.json: duplicate key\(s\) \['A'\]"):
        camera.load_presets(target)
    with pytest.raises(ValueError, match="format_version"):
        camera.load_presets(_write_presets(tmp_path, {}, format_version=2))
    target.write_text("{not json")
    with pytest.raises(ValueError, match="dup.json: not valid JSON"):
        camera.load_presets(target)


def _hand_direction(u, v, fx, fy, cx, cy):
    d = torch.tensor([(u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1.0], dtype=torch.float64)
    return d / d.norm()


@pytest.mark.parametrize("width, height", [(16, 16), (32, 8), (32, 18)])
def test_plucker_matches_hand_values_with_aspect_correction(width, height):
    fx, fy, cx, cy = 0.5, 0.8, 0.45, 0.55
    # Frame 0: identity. Frame 1: same orientation, centre at (1, 0, 0), so t = -C.
    path = CameraPath(((1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0), (1, 0, 0, -1, 0, 1, 0, 0, 0, 0, 1, 0)),
                      ((fx, fy, cx, cy),) * 2)
    emb = camera.plucker_embedding(path, width, height)
    assert emb.shape == (2, height, width, 6) and emb.dtype == torch.float32
    if 16 / 9 > width / height:  # narrower than 16:9: fx is widened to keep square pixels
        fx_pix, fy_pix = height * 16 / 9 * fx, fy * height
    else:
        fx_pix, fy_pix = fx * width, width / (16 / 9) * fy
    for u, v in [(0, 0), (width - 1, height - 1), (3, 5)]:
        d = _hand_direction(u, v, fx_pix, fy_pix, cx * width, cy * height)
        torch.testing.assert_close(emb[0, v, u].double(), torch.cat([torch.zeros(3, dtype=torch.float64), d]),
                                   atol=1e-6, rtol=0)
        moment = torch.stack([torch.tensor(0.0, dtype=torch.float64), -d[2], d[1]])  # (1, 0, 0) x d
        torch.testing.assert_close(emb[1, v, u].double(), torch.cat([moment, d]), atol=1e-6, rtol=0)


def test_plucker_uses_poses_relative_to_the_first_frame():
    path = camera.combine("Orbit Left", "Pan Up", "ACW", frames=5)
    shift = torch.eye(4, dtype=torch.float64)
    shift[:3, :3] = torch.linalg.matrix_exp(torch.tensor([[0, -0.3, 0.2], [0.3, 0, -0.1], [-0.2, 0.1, 0]],
                                                         dtype=torch.float64))
    shift[:3, 3] = torch.tensor([2.0, -1.0, 0.5])
    w2c = path.w2c() @ torch.linalg.inv(shift)  # the same motion in another world frame
    moved = CameraPath.from_matrices(w2c, path.intrinsics_tensor())
    torch.testing.assert_close(camera.plucker_embedding(moved, 24, 14), camera.plucker_embedding(path, 24, 14),
                               atol=2e-5, rtol=0)


def test_camera_control_channels_shape_scale_and_first_frame():
    frames, height, width = 9, 16, 24
    embedding = torch.full((frames, height, width, 6), 2.0)
    embedding[0] = 1.0
    embedding[..., 5] *= -1
    out = camera.camera_control_channels(embedding, 3, 2, 3)
    assert out.shape == (1, 6, 3, 2, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, :5, 0], torch.full((1, 5, 2, 3), 6.0))  # frame 0 alone, no bleed
    torch.testing.assert_close(out[:, :5, 1:], torch.full((1, 5, 2, 2, 3), 12.0))
    torch.testing.assert_close(out[:, 5], -out[:, 4])
    ramp = torch.arange(frames, dtype=torch.float32)[:, None, None, None].expand(frames, height, width, 6)
    out = camera.camera_control_channels(ramp, 3, 2, 3)
    # Frames 1..8 -> 2 latent frames (align_corners False): sources 1.5 and 5.5 of the 8, values 2.5 and 6.5.
    expected = torch.nn.functional.interpolate(ramp.permute(3, 0, 1, 2)[None, :, 1:], size=(2, 2, 3),
                                               mode="trilinear", align_corners=False)
    torch.testing.assert_close(out[:, :, 1:], expected * 6)
    torch.testing.assert_close(out[0, 0, 1:, 0, 0], torch.tensor([2.5, 6.5]) * 6)
    assert camera.camera_control_channels(embedding[:1], 1, 2, 3).shape == (1, 6, 1, 2, 3)
    with pytest.raises(ValueError, match="at least 2 frames"):
        camera.camera_control_channels(embedding[:1], 3, 2, 3)
    with pytest.raises(ValueError, match=r"\[F, H, W, 6\]"):
        camera.camera_control_channels(embedding[..., :3], 3, 2, 3)


def test_camera_path_validation():
    with pytest.raises(ValueError, match="at least one pose"):
        CameraPath((), ())
    with pytest.raises(ValueError, match="frame 1"):
        CameraPath(((1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0),) * 2, ((0.5, 0.5, 0.5, 0.5), (0.0, 0.5, 0.5, 0.5)))
    with pytest.raises(TypeError):
        camera.preset_path("Static", 3)[0]
