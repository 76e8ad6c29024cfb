"""Trajectory parsing (every format), resampling (the documented algorithm) and the control-video render."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from easyanimate_core.trajectory import (
    Trajectory,
    blob_half_size,
    gaussian_template,
    parse_trajectory,
    render_trajectory_video,
    resample_track,
    trajectory_to_json,
)

CANVAS = (600, 382)  # the reference workflow's SplineEditor canvas (width, height)
TRACK_A = [(12, 300), (150, 250), (300, 191), (420, 120), (588, 40)]
TRACK_B = [(300, 190), (301, 190), (302, 191)]


def _kj(track):
    return [{"x": x, "y": y} for x, y in track]


def _normalised(track):
    return tuple((x / CANVAS[0], y / CANVAS[1]) for x, y in track)


def _widget(tracks, **extra):
    doc = {"version": 1, "canvas": {"width": CANVAS[0], "height": CANVAS[1]}, **extra}
    doc["tracks"] = [{"points": [list(p) for p in _normalised(t)]} for t in tracks]
    return doc


# ---------------------------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    "value",
    [
        json.dumps(_kj(TRACK_A)),  # (a) coord_str as KJNodes writes it
        json.dumps(_kj(TRACK_A)).replace('"', "'"),  # (a) single quotes, as the reference tolerates
        _kj(TRACK_A),  # (a) already parsed
        [json.dumps(_kj(TRACK_A))],  # (c) a list holding one string
        json.dumps([_kj(TRACK_A)]),  # (b) nested, one track
    ],
)
def test_single_track_formats_agree(value):
    parsed = parse_trajectory(value, canvas_size=CANVAS)
    assert parsed.tracks == (_normalised(TRACK_A),)
    assert parsed.per_frame and parsed.canvas_size == CANVAS and parsed.frames == len(TRACK_A)


@pytest.mark.parametrize(
    "value",
    [
        [_kj(TRACK_A), _kj(TRACK_B)],  # (b) nested list
        json.dumps([_kj(TRACK_A), _kj(TRACK_B)]),  # (b) as a JSON string
        [json.dumps(_kj(TRACK_A)), json.dumps(_kj(TRACK_B))],  # (c) AppendStringsToList
        (json.dumps(_kj(TRACK_A)).replace('"', "'"), json.dumps(_kj(TRACK_B))),  # (c) tuple, single quotes
    ],
)
def test_multi_track_formats_agree(value):
    parsed = parse_trajectory(value, canvas_size=CANVAS)
    assert parsed.tracks == (_normalised(TRACK_A), _normalised(TRACK_B))
    assert parsed.per_frame and parsed.frames == len(TRACK_A)


@pytest.mark.parametrize("as_string", [False, True])
def test_widget_format_gives_the_same_tracks(as_string):
    doc = _widget([TRACK_A, TRACK_B], frames=49)
    parsed = parse_trajectory(json.dumps(doc) if as_string else doc)
    assert parsed.tracks == (_normalised(TRACK_A), _normalised(TRACK_B))
    assert parsed == Trajectory(tracks=parsed.tracks, per_frame=False, canvas_size=CANVAS, frames=49)


def test_widget_canvas_falls_back_to_argument_and_is_optional():
    doc = {"version": 1, "tracks": [{"points": [[0.5, 0.5]], "colour": "red"}]}  # unknown keys are ignored
    assert parse_trajectory(doc).canvas_size is None
    assert parse_trajectory(doc, canvas_size=(64, 32)).canvas_size == (64, 32)
    assert parse_trajectory(doc, canvas_size=(64, 32)).aspect == 2.0


def test_list_of_widget_strings_merges_tracks():
    one, two = _widget([TRACK_A], frames=49), _widget([TRACK_B])
    parsed = parse_trajectory([json.dumps(one), json.dumps(two)])
    assert parsed.tracks == (_normalised(TRACK_A), _normalised(TRACK_B))
    assert not parsed.per_frame and parsed.frames == 49


@pytest.mark.parametrize(
    "doc",
    [
        _widget([TRACK_A, TRACK_B], frames=49),
        {"version": 1, "tracks": [{"points": [[0.1, 0.2]]}, {"points": [[1 / 3, 0.7], [0.9, 1.0]]}]},
    ],
)
def test_widget_format_round_trips(doc):
    parsed = parse_trajectory(doc)
    text = trajectory_to_json(parsed)
    assert parse_trajectory(text) == parsed
    assert json.loads(text)["version"] == 1


def test_per_frame_trajectories_are_not_written_as_control_points():
    with pytest.raises(ValueError, match="one point per frame"):
        trajectory_to_json(parse_trajectory(_kj(TRACK_A), canvas_size=CANVAS))


def test_trajectory_passes_through():
    parsed = parse_trajectory(_widget([TRACK_A]))
    assert parse_trajectory(parsed) is parsed


_BAD_POINT_TRACKS = [_kj(TRACK_B), _kj(TRACK_A[:4]) + [{"x": "7", "y": 3}]]


@pytest.mark.parametrize(
    ("value", "canvas", "pieces"),
    [
        ('[{"x": 1, "y": 2}, {"x": 3}]', CANVAS, ["trajectory, point 2", '{"x": number, "y": number}', '{"x": 3}']),
        (_BAD_POINT_TRACKS, CANVAS, ["track 2, point 5", '{"x": number, "y": number}', '{"x": "7", "y": 3}']),
        ([json.dumps(_kj(TRACK_B)), '[{"x": 1, "y": 2'], CANVAS, ["string 2", "not valid JSON", '[{"x": 1, "y": 2']),
        ([{"x": 1, "y": 2}, {"x": True, "y": 2}], CANVAS, ["point 2", '"x": true']),
        ([{"x": 1, "y": 2}, {"x": float("nan"), "y": 2}], CANVAS, ["point 2", "NaN"]),
        ([{"x": 1, "y": 2}, [{"x": 1, "y": 2}]], CANVAS, ["point 2", '[{"x": 1, "y": 2}]']),
        ([[{"x": 1, "y": 2}], {"x": 1, "y": 2}], CANVAS, ["track 2", "a list of", '{"x": 1, "y": 2}']),
        ([[1, 2], [3, 4]], CANVAS, ["track 1, point 1", '{"x": number, "y": number}', "1"]),
        ([7, 8], CANVAS, ["item 1", "7"]),
        (42, CANVAS, ["expected a trajectory", "42"]),
        ("   ", CANVAS, ["empty"]),
        ([], CANVAS, ["at least one point"]),
        (_kj(TRACK_A), None, ["canvas", "mask"]),
        (_kj(TRACK_A), (0, 10), ["canvas_size", "positive whole number", "0"]),
        ({"tracks": []}, None, ["version", '{"tracks": []}']),
        ({"version": 2, "tracks": []}, None, ["version", "2"]),
        ({"version": 1, "tracks": []}, None, ["tracks", "non-empty"]),
        ({"version": 1, "tracks": [{"points": []}]}, None, ["track 1", "at least one point"]),
        ({"version": 1, "tracks": [{"points": [[0.1, 0.2], [300, 100]]}]}, None, ["track 1, point 2", "0..1", "300"]),
        ({"version": 1, "tracks": [{"points": [[0.1, 0.2, 0.3]]}]}, None, ["track 1, point 1", "[x, y]"]),
        ({"version": 1, "canvas": {"width": 600}, "tracks": [{"points": [[0.1, 0.2]]}]}, None, ["canvas", "height"]),
        ({"version": 1, "frames": 0, "tracks": [{"points": [[0.1, 0.2]]}]}, None, ["frames", "positive"]),
        ([json.dumps(_kj(TRACK_B)), json.dumps(_widget([TRACK_A]))], CANVAS, ["string 2", "mixes"]),
    ],
)
def test_malformed_input_names_the_piece(value, canvas, pieces):
    with pytest.raises(ValueError) as info:
        parse_trajectory(value, canvas_size=canvas)
    for piece in pieces:
        assert piece in str(info.value), str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Resampling


def _documented_curve(points, per_segment=2000):
    """The curve exactly as the module docstring describes it, sampled densely with plain Python."""
    p = [np.asarray(q, dtype=np.float64) for q in points]
    n = len(p)
    t = {i: 0.25 * (p[i + 1] - p[i - 1]) for i in range(1, n - 1)}
    segments = []
    for i in range(n - 1):
        if i == 0 or i == n - 2:
            q = p[1] - 2 / 3 * t[1] if i == 0 else p[n - 2] + 2 / 3 * t[n - 2]
            b1, b2 = p[i] + 2 / 3 * (q - p[i]), p[i + 1] + 2 / 3 * (q - p[i + 1])
        else:
            b1, b2 = p[i] + t[i], p[i + 1] - t[i + 1]
        segments.append((p[i], b1, b2, p[i + 1]))
    u = np.linspace(0.0, 1.0, per_segment + 1)[:, None]
    dense = [
        ((1 - u) ** 3) * a + 3 * ((1 - u) ** 2) * u * b + 3 * (1 - u) * u**2 * c + u**3 * d for a, b, c, d in segments
    ]
    return np.concatenate([dense[0]] + [s[1:] for s in dense[1:]])


CONTROL = [(0.1, 0.8), (0.3, 0.2), (0.6, 0.7), (0.9, 0.3)]


@pytest.mark.parametrize("frames", [1, 2, 5, 49, 97])
@pytest.mark.parametrize("points", [CONTROL, CONTROL[:3], CONTROL[:2], CONTROL[:1]])
def test_resample_count_and_endpoints(points, frames):
    out = resample_track(points, frames)
    assert out.shape == (frames, 2) and out.dtype == np.float64
    np.testing.assert_array_equal(out[0], points[0])
    if frames > 1:
        np.testing.assert_array_equal(out[-1], points[-1])


@pytest.mark.parametrize("aspect", [1.0, 600 / 382])
@pytest.mark.parametrize("points", [CONTROL, CONTROL[:3], [(0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9), (0.5, 0.5)]])
def test_resample_is_equally_spaced_on_the_documented_curve(points, aspect):
    frames = 25
    scale = np.array([aspect, 1.0])
    out = resample_track(points, frames, aspect=aspect) * scale  # measured in canvas proportions
    dense = _documented_curve(points) * scale
    starts, steps = dense[:-1], np.diff(dense, axis=0)  # the dense curve as a polyline
    lengths = np.linalg.norm(steps, axis=1)
    cumulative = np.concatenate([[0.0], np.cumsum(lengths)])
    # project every sample onto the dense polyline: distance to the curve and arc-length position
    t = np.clip(((out[:, None] - starts[None]) * steps[None]).sum(-1) / lengths**2, 0.0, 1.0)
    distance = np.linalg.norm(starts[None] + t[..., None] * steps[None] - out[:, None], axis=2)
    nearest = distance.argmin(axis=1)
    assert distance.min(axis=1).max() < 1e-4  # every sample lies on the curve
    position = cumulative[nearest] + t[np.arange(frames), nearest] * lengths[nearest]
    np.testing.assert_allclose(np.diff(position), cumulative[-1] / (frames - 1), rtol=0, atol=1e-3 * cumulative[-1])


def test_symmetric_curve_passes_through_the_middle_control_point():
    out = resample_track([(0.1, 0.5), (0.5, 0.1), (0.9, 0.5)], 9)
    np.testing.assert_allclose(out[4], (0.5, 0.1), atol=1e-12)
    np.testing.assert_allclose(out[:, 0] + out[::-1, 0], 1.0, atol=1e-12)  # mirror symmetry about x = 0.5
    assert out[:, 1].min() >= 0.1 - 1e-12  # the curve's vertex is the middle control point


def test_straight_segment_is_evenly_spaced_by_hand():
    out = resample_track([(0.1, 0.2), (0.7, 0.5)], 4)
    np.testing.assert_allclose(out, [(0.1, 0.2), (0.3, 0.3), (0.5, 0.4), (0.7, 0.5)], atol=1e-15)


def test_single_point_is_static():
    np.testing.assert_array_equal(resample_track([(0.25, 0.75)], 3), [(0.25, 0.75)] * 3)


def test_per_frame_points_interpolate_linearly_by_index():
    points = [(0.0, 0.0), (0.4, 0.2), (0.4, 1.0)]
    np.testing.assert_array_equal(resample_track(points, 3, per_frame=True), points)
    out = resample_track(points, 5, per_frame=True)
    np.testing.assert_allclose(out, [(0.0, 0.0), (0.2, 0.1), (0.4, 0.2), (0.4, 0.6), (0.4, 1.0)], atol=1e-15)
    np.testing.assert_allclose(resample_track(points, 2, per_frame=True), [(0.0, 0.0), (0.4, 1.0)])


def test_resample_refuses_bad_arguments():
    with pytest.raises(ValueError, match="frames"):
        resample_track(CONTROL, 0)
    with pytest.raises(ValueError, match="shape"):
        resample_track([], 5)


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def test_template_values_by_hand():
    template = gaussian_template()
    assert template.shape == (200, 200) and template.dtype == np.uint8
    assert template[100, 100] == 255
    assert abs(template[100, 140] / 255 - math.exp(-0.5)) < 1 / 255
    assert abs(template[60, 100] / 255 - math.exp(-0.5)) < 1 / 255
    assert template[100, 199] == int(255 * math.exp(-0.5 * (99 / 40) ** 2))  # on the disc's edge: ~4.7 %
    assert template[100, 0] == 0 and template[0, 0] == 0  # 100 px away: outside the radius-99 disc


@pytest.mark.parametrize(("size", "half"), [((600, 382), 24), ((1280, 720), 50), ((512, 512), 26), ((64, 64), 3)])
def test_blob_half_size(size, half):
    assert blob_half_size(*size) == half


def test_video_shape_dtype_range():
    video = render_trajectory_video(parse_trajectory(_widget([TRACK_A, TRACK_B])), 9, 160, 96)
    assert video.shape == (9, 96, 160, 3) and video.dtype == torch.float32
    assert video.min() == 0 and 0.9 < video.max() <= 1
    assert torch.equal(video[..., 0], video[..., 1]) and torch.equal(video[..., 0], video[..., 2])


def test_blob_maxima_follow_the_track():
    width, height, frames = 600, 382, 13
    trajectory = parse_trajectory(_widget([[(60, 320), (300, 80), (540, 300)]]))
    video = render_trajectory_video(trajectory, frames, width, height)[..., 0]
    expected = np.floor(trajectory.resample(frames)[0] * (width, height) + 0.5)
    for frame in range(frames):
        y, x = np.unravel_index(int(video[frame].argmax()), (height, width))
        assert abs(x - expected[frame, 0]) <= 1 and abs(y - expected[frame, 1]) <= 1
        weights = video[frame].numpy()
        cy = (weights.sum(1) * np.arange(height)).sum() / weights.sum()
        cx = (weights.sum(0) * np.arange(width)).sum() / weights.sum()
        assert abs(cx - expected[frame, 0]) <= 1 and abs(cy - expected[frame, 1]) <= 1


def test_pixel_input_matches_reference_box_and_template():
    width, height = 600, 382
    video = render_trajectory_video(
        parse_trajectory([{"x": 300, "y": 191}], canvas_size=(width, height)), 1, width, height
    )
    blob = cv2.resize(gaussian_template(), (48, 48), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal((video[0, 167:215, 276:324, 0] * 255).round().numpy(), blob)
    assert video[0].sum() * 255 == pytest.approx(float(blob.sum()) * 3, rel=1e-6)


def test_blob_is_squashed_at_the_border_not_cropped():
    width, height, half = 600, 382, 24
    video = render_trajectory_video(
        parse_trajectory([{"x": 0, "y": 191}], canvas_size=(width, height)), 1, width, height
    )
    image = video[0, ..., 0].numpy()
    squashed = cv2.resize(gaussian_template(), (half, 2 * half), interpolation=cv2.INTER_LINEAR) / 255
    np.testing.assert_allclose(image[191 - half : 191 + half, :half], squashed, atol=1e-6)
    assert image[:, half:].max() == 0
    row = image[191, :half]
    assert 0.9 < row.max() and abs(int(row.argmax()) - half // 2) <= 1  # the whole blob fits: peak mid-box
    assert row[0] < 0.1  # a cropped blob would peak at the border


def test_small_boxes_are_skipped_and_last_row_and_column_stay_black():
    width, height, half = 600, 382, 24
    points = [{"x": -half + 3, "y": 100}, {"x": width, "y": height}, {"x": width - 1, "y": height - 1}]
    video = render_trajectory_video(parse_trajectory(points, canvas_size=(width, height)), 3, width, height)
    assert video[0].max() == 0  # box 3 px wide: nothing drawn, as in the reference
    assert video[1].max() > 0 and video[2].max() > 0
    assert video[:, -1].max() == 0 and video[:, :, -1].max() == 0  # y2, x2 <= size - 1 exclusive


def test_tracks_combine_by_maximum():
    width, height, frames = 200, 120, 5
    one = _widget([[(40, 30), (160, 90)]])
    two = _widget([[(60, 90), (140, 30)]])
    both = {**one, "tracks": one["tracks"] + two["tracks"]}
    a, b, ab = (render_trajectory_video(parse_trajectory(doc), frames, width, height) for doc in (one, two, both))
    assert torch.equal(ab, torch.maximum(a, b))
    assert not torch.equal(ab, a) and not torch.equal(ab, b)


def test_per_frame_tracks_are_resampled_to_the_video_length():
    trajectory = parse_trajectory([_kj(TRACK_A), _kj(TRACK_B)], canvas_size=CANVAS)
    video = render_trajectory_video(trajectory, 9, 300, 191)
    assert video.shape == (9, 191, 300, 3)
    assert trajectory.resample(9).shape == (2, 9, 2)


def test_render_refuses_bad_sizes():
    trajectory = parse_trajectory(_widget([TRACK_A]))
    with pytest.raises(ValueError, match="width"):
        render_trajectory_video(trajectory, 5, 0, 64)
