"""Trajectory control: parse drawn trajectories (every format in use) and render the control video.

The V5.1 Control models were trained with DragAnything-style trajectory videos: one Gaussian blob per tracked
object and frame on a black background (reference section 7). This module turns a drawing into that video.

Input formats accepted by :func:`parse_trajectory`
--------------------------------------------------
(a) KJNodes SplineEditor ``coord_str``: a flat list of ``{"x": number, "y": number}`` points in canvas pixels,
    one point per frame. A JSON string or an already parsed list; single quotes are accepted (the reference
    replaces them with double quotes).
(b) A nested list of such lists: several tracks.
(c) A list of strings, each holding (a), (b) or (d): what KJNodes AppendStringsToList produces. The reference
    guesses "list of strings" from ``len(value) < 10``; here the Python type decides (a ``str`` is one document,
    a ``list`` of ``str`` is several), which gives the same answer for every input the reference accepts.
(d) Our widget's format, version 1 (coordinates normalised to 0..1 of the canvas; origin top left, y down)::

        {"version": 1,
         "canvas": {"width": 600, "height": 382},       # optional: the canvas the user drew on, in pixels
         "frames": 49,                                   # optional: the frame count shown while drawing
         "tracks": [{"points": [[0.10, 0.80], [0.45, 0.30], [0.90, 0.50]]},   # control points of track 1
                    {"points": [[0.50, 0.50]]}]}                               # one point: a static object

    The points are control points the user placed; the path is the smooth curve through them described below.
    Unknown keys are ignored so that later versions can add fields (colours, names) without breaking this one.

Pixel formats (a)-(c) need the size of the canvas they were drawn on (for KJNodes: the size of the SplineEditor's
``mask`` output); it comes from the ``canvas_size`` argument. Every format parses to a :class:`Trajectory` in
normalised coordinates. Malformed input raises ``ValueError`` naming the piece (tracks, points and strings are
numbered from 1) and the expected form.

Resampling to the video's frame count (:func:`resample_track`)
-------------------------------------------------------------
Per-frame formats (a)-(c) already hold one point per frame: when the counts differ, linear interpolation by
index (frame j of F sits at index t = j * (n - 1) / (F - 1) of the n points); identical counts return the points.

Our widget's control points P_0 .. P_{n-1} (normalised) become a curve that matches KJNodes' default
"cardinal" interpolation with tension 0.5 (protovis' construction, which KJNodes draws and samples):

1. n = 1: the object is static. n = 2: the straight segment P_0 P_1 (the polyline of step 2 is those two points).
2. n >= 3: tangents T_i = a * (P_{i+1} - P_{i-1}) for 1 <= i <= n - 2, with a = (1 - tension) / 2 = 0.25.
   Segment i runs from P_i to P_{i+1} as a cubic Bezier (P_i, B1, B2, P_{i+1}):
     * inner segments (1 <= i <= n - 3): B1 = P_i + T_i, B2 = P_{i+1} - T_{i+1};
     * the first segment is the quadratic Bezier with control Q = P_1 - (2/3) T_1, the last the quadratic with
       Q = P_{n-2} + (2/3) T_{n-2}; as cubics: B1 = P_i + (2/3) (Q - P_i), B2 = P_{i+1} + (2/3) (Q - P_{i+1}).
       (For n = 3 both segments are quadratic and share T_1.)
   Each segment is evaluated at u = k / 64, k = 0..64, with
   B(u) = (1-u)^3 P_i + 3 (1-u)^2 u B1 + 3 (1-u) u^2 B2 + u^3 P_{i+1}; consecutive segments share their end
   sample, giving a polyline of 64 (n - 1) + 1 vertices that passes exactly through every control point.
3. Arc length is measured on that polyline in canvas proportions: a step (dx, dy) has length
   sqrt((dx * W / H)^2 + dy^2) (W / H = 1 when the canvas is unknown). Let c_0 = 0, c_k the cumulative lengths,
   L = c_last. Frame j of F (F >= 2) sits at s_j = L * j / (F - 1): take the last vertex k with c_k <= s_j
   (k at most the last piece), f = (s_j - c_k) / (c_{k+1} - c_k) clipped to [0, 1] (0 for a zero-length
   piece), point = V_k + f (V_{k+1} - V_k). The first and last frames are set to P_0 and P_{n-1} exactly.
   F = 1 gives P_0; L = 0 gives P_0 for every frame.

Rendering (:func:`render_trajectory_video`): reference section 7 step 3; see the function's docstring.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import cv2
import numpy as np
import torch

logger = logging.getLogger(__name__)

WIDGET_FORMAT_VERSION = 1
SPLINE_TENSION = 0.5
SAMPLES_PER_SEGMENT = 64
TEMPLATE_SIZE = 200
TEMPLATE_SIGMA = 40.0
TEMPLATE_RADIUS = 99

Point = tuple[float, float]
Track = tuple[Point, ...]

_PIXEL_POINT = '{"x": number, "y": number} (canvas pixels)'
_WIDGET_POINT = "[x, y] with x and y numbers in 0..1"


@dataclass(frozen=True)
class Trajectory:
    """Parsed trajectory: ``tracks`` of (x, y) points normalised to 0..1 of the canvas (origin top left).

    ``per_frame`` is True for the pixel formats (one point per frame, resampled linearly by index) and False for
    our widget's control points (resampled along the smooth curve). ``canvas_size`` is (width, height) in pixels
    when known. ``frames`` is the frame count the drawing was made for: the widget's ``"frames"``, or for
    per-frame formats the longest track's point count.
    """

    tracks: tuple[Track, ...]
    per_frame: bool
    canvas_size: tuple[int, int] | None = None
    frames: int | None = None

    @property
    def aspect(self) -> float:
        """Canvas width / height, used to measure arc length in the proportions the user saw (1 if unknown)."""
        return 1.0 if self.canvas_size is None else self.canvas_size[0] / self.canvas_size[1]

    def resample(self, frames: int) -> np.ndarray:
        """Every track at ``frames`` positions: float64 ``[tracks, frames, 2]``, normalised (x, y)."""
        return np.stack([resample_track(t, frames, per_frame=self.per_frame, aspect=self.aspect) for t in self.tracks])


# ----------------------------------------------------------------------------------------------------------------
# Parsing


def parse_trajectory(value: Any, *, canvas_size: tuple[int, int] | None = None) -> Trajectory:
    """Parse any accepted trajectory format (see the module docstring) into a :class:`Trajectory`.

    ``canvas_size`` = (width, height) in pixels of the canvas that pixel coordinates were drawn on; required for
    the pixel formats, used for our widget's format only when the JSON has no ``"canvas"``.
    """
    canvas = None if canvas_size is None else _check_canvas_size(canvas_size)
    if isinstance(value, Trajectory):
        return value
    trajectory = _parse_value(value, (), canvas)
    logger.debug(
        "parsed trajectory: %d track(s), %s, canvas %s",
        len(trajectory.tracks),
        "one point per frame" if trajectory.per_frame else "control points",
        trajectory.canvas_size,
    )
    return trajectory


def trajectory_to_json(trajectory: Trajectory) -> str:
    """Serialise control-point tracks in our widget's format (version 1); :func:`parse_trajectory` reads it back."""
    if trajectory.per_frame:
        raise ValueError(
            "trajectory_to_json writes our widget's format, which holds control points of a smooth curve; this "
            "trajectory holds one point per frame (a KJNodes-style list) and would change shape if re-read as one."
        )
    document: dict[str, Any] = {"version": WIDGET_FORMAT_VERSION}
    if trajectory.canvas_size is not None:
        document["canvas"] = {"width": trajectory.canvas_size[0], "height": trajectory.canvas_size[1]}
    if trajectory.frames is not None:
        document["frames"] = trajectory.frames
    document["tracks"] = [{"points": [[x, y] for x, y in track]} for track in trajectory.tracks]
    return json.dumps(document)


def _parse_value(value: Any, where: tuple[str, ...], canvas: tuple[int, int] | None) -> Trajectory:
    if isinstance(value, str):
        return _parse_value(_decode_json(value, where), where, canvas)
    if isinstance(value, dict):
        return _parse_widget(value, where, canvas)
    if not isinstance(value, (list, tuple)):
        raise _error(where, 'a trajectory: a JSON string, a list of {"x", "y"} points, or our widget\'s JSON', value)
    if not value:
        raise _error(where, "at least one point; draw a trajectory first", value)
    first = value[0]
    if isinstance(first, str):
        if any(part.startswith("string ") for part in where):
            raise ValueError(f"{_label(where)}: a list of JSON strings inside a JSON string is nested too deeply: "
                             f"give one list of strings, each holding one trajectory.")
        parts = []
        for i, item in enumerate(value, 1):
            here = where + (f"string {i}",)
            parts.append(_parse_value(_expect(item, str, here, "a JSON string like the others"), here, canvas))
        return _merge(parts, where)
    if isinstance(first, dict):
        track = _parse_pixel_track(value, where, canvas)
        return Trajectory(tracks=(track,), per_frame=True, canvas_size=canvas, frames=len(track))
    if isinstance(first, (list, tuple)):
        tracks = []
        for i, item in enumerate(value, 1):
            here = where + (f"track {i}",)
            tracks.append(
                _parse_pixel_track(_expect(item, (list, tuple), here, f"a list of {_PIXEL_POINT}"), here, canvas)
            )
        tracks = tuple(tracks)
        return Trajectory(tracks=tracks, per_frame=True, canvas_size=canvas, frames=max(len(t) for t in tracks))
    raise _error(where + ("item 1",), f"{_PIXEL_POINT}, a list of such points (one track), or a JSON string", first)


def _parse_pixel_track(points: Sequence[Any], where: tuple[str, ...], canvas: tuple[int, int] | None) -> Track:
    if canvas is None:
        raise ValueError(
            f'{_label(where)}: pixel coordinates ({{"x", "y"}} points, as KJNodes\' SplineEditor writes them) need '
            "the size of the canvas they were drawn on: connect the SplineEditor's mask output (or pass "
            "canvas_size=(width, height))."
        )
    if not points:
        raise _error(where, f"a non-empty list of {_PIXEL_POINT}", points)
    width, height = canvas
    margin = blob_half_size(width, height)  # a blob centred this far outside still reaches into the canvas
    track = []
    for i, point in enumerate(points, 1):
        here = where + (f"point {i}",)
        if not isinstance(point, dict) or "x" not in point or "y" not in point:
            raise _error(here, _PIXEL_POINT, point)
        x, y = (_number(point[key], here, _PIXEL_POINT, point) for key in ("x", "y"))
        if not (-margin <= x <= width + margin and -margin <= y <= height + margin):
            raise _error(here, f"a point on the {width}x{height} canvas (x in {-margin}..{width + margin}, y in "
                               f"{-margin}..{height + margin}: the blob of a point farther out draws nothing); draw "
                               f"inside the canvas, or give the size of the canvas it was drawn on", point)
        track.append((x / width, y / height))
    return tuple(track)


def _parse_widget(document: dict, where: tuple[str, ...], canvas: tuple[int, int] | None) -> Trajectory:
    expected_doc = (
        f'our widget\'s JSON {{"version": {WIDGET_FORMAT_VERSION}, "canvas": {{"width": W, "height": H}}, '
        '"frames": N, "tracks": [{"points": [[x, y], ...]}]}'
    )
    if "version" not in document or "tracks" not in document:
        raise _error(where, expected_doc, document)
    if document["version"] != WIDGET_FORMAT_VERSION:
        raise _error(
            where + ("version",),
            f"{WIDGET_FORMAT_VERSION} (this version of the pack reads version "
            f"{WIDGET_FORMAT_VERSION}; update the pack)",
            document["version"],
        )
    if document.get("canvas") is not None:
        raw = document["canvas"]
        if not isinstance(raw, dict) or "width" not in raw or "height" not in raw:
            raise _error(where + ("canvas",), '{"width": W, "height": H} in pixels', raw)
        canvas = _check_canvas_size((raw["width"], raw["height"]), where + ("canvas",))
    frames = document.get("frames")
    if frames is not None:
        frames = _positive_int(frames, where + ("frames",), "a positive whole number of frames, or null")
    tracks_raw = document["tracks"]
    if not isinstance(tracks_raw, (list, tuple)) or not tracks_raw:
        raise _error(where + ("tracks",), 'a non-empty list of {"points": [[x, y], ...]}', tracks_raw)
    tracks = []
    for t, track in enumerate(tracks_raw, 1):
        here = where + (f"track {t}",)
        points = track.get("points") if isinstance(track, dict) else None
        if not isinstance(points, (list, tuple)) or not points:
            raise _error(here, '{"points": [[x, y], ...]} with at least one point', track)
        parsed = []
        for p, point in enumerate(points, 1):
            there = here + (f"point {p}",)
            if not isinstance(point, (list, tuple)) or len(point) != 2:
                raise _error(there, _WIDGET_POINT, point)
            x, y = (_number(v, there, _WIDGET_POINT, point) for v in point)
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise _error(
                    there,
                    _WIDGET_POINT + ' (normalised; pixel coordinates belong in the [{"x": .., "y": ..}] list format)',
                    point,
                )
            parsed.append((x, y))
        tracks.append(tuple(parsed))
    return Trajectory(tracks=tuple(tracks), per_frame=False, canvas_size=canvas, frames=frames)


def _merge(parts: list[Trajectory], where: tuple[str, ...]) -> Trajectory:
    for i, part in enumerate(parts[1:], 2):
        if part.per_frame != parts[0].per_frame:
            raise ValueError(
                f"{_label(where + (f'string {i}',))}: mixes our widget's control points with KJNodes-style "
                "per-frame points; give all strings in one format."
            )
    canvases = {part.canvas_size for part in parts if part.canvas_size is not None}
    if len(canvases) > 1:
        raise ValueError(
            f"{_label(where)}: the strings were drawn on different canvases {sorted(canvases)}; "
            "draw all tracks on one canvas size."
        )
    frames = [part.frames for part in parts if part.frames is not None]
    return Trajectory(
        tracks=tuple(track for part in parts for track in part.tracks),
        per_frame=parts[0].per_frame,
        canvas_size=canvases.pop() if canvases else None,
        frames=max(frames) if frames else None,
    )


def _decode_json(text: str, where: tuple[str, ...]) -> Any:
    if not text.strip():
        raise ValueError(f"{_label(where)}: empty; draw a trajectory or connect KJNodes' coord_str.")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{_label(where)}: nested too deeply to be a trajectory (a list of tracks of points is "
                         f"three levels deep): {_show(text)}") from None
    except json.JSONDecodeError as strict_error:
        try:
            return json.loads(text.replace("'", '"'))
        except json.JSONDecodeError:
            raise ValueError(
                f"{_label(where)}: not valid JSON ({strict_error.msg} at line {strict_error.lineno} "
                f"column {strict_error.colno}): {_show(text)}"
            ) from None


def _check_canvas_size(size: Any, where: tuple[str, ...] = ("canvas_size",)) -> tuple[int, int]:
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise _error(where, "(width, height) in pixels", size)
    return (
        _positive_int(size[0], where, "a positive whole number of pixels"),
        _positive_int(size[1], where, "a positive whole number of pixels"),
    )


def _positive_int(value: Any, where: tuple[str, ...], expected: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Real) or not float(value).is_integer() or value < 1:
        raise _error(where, expected, value)
    return int(value)


def _number(value: Any, where: tuple[str, ...], expected: str, shown: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise _error(where, expected, shown)
    return float(value)


def _expect(value: Any, kind: type | tuple[type, ...], where: tuple[str, ...], expected: str) -> Any:
    if not isinstance(value, kind):
        raise _error(where, expected, value)
    return value


def _label(where: tuple[str, ...]) -> str:
    return "trajectory" + "".join(f", {part}" for part in where)


def _show(value: Any, limit: int = 120) -> str:
    try:
        text = value if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = object.__repr__(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error(where: tuple[str, ...], expected: str, got: Any) -> ValueError:
    return ValueError(f"{_label(where)}: expected {expected}, got {_show(got)}")


# ----------------------------------------------------------------------------------------------------------------
# Resampling


def resample_track(
    points: Sequence[Sequence[float]], frames: int, *, per_frame: bool = False, aspect: float = 1.0
) -> np.ndarray:
    """One track at ``frames`` positions: float64 ``[frames, 2]`` (normalised x, y).

    ``per_frame=False``: control points -> the cardinal curve sampled equally by arc length, measured with x
    scaled by ``aspect`` (canvas width / height). ``per_frame=True``: linear interpolation by index. The exact
    algorithm is in the module docstring (the JS widget implements the same).
    """
    frames = _positive_int(frames, ("frames",), "a positive whole number of frames")
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < 1 or pts.shape[1] != 2:
        raise ValueError(f"resample_track: expected a non-empty sequence of (x, y) points, got shape {pts.shape}")
    if not math.isfinite(aspect) or aspect <= 0:
        raise ValueError(f"resample_track: aspect must be a positive number (canvas width / height), got {aspect}")
    if per_frame:
        return _resample_by_index(pts, frames)
    return _resample_by_arc_length(_spline_polyline(pts), frames, aspect)


def _resample_by_index(pts: np.ndarray, frames: int) -> np.ndarray:
    n = len(pts)
    if n == frames:
        return pts.copy()
    if n == 1 or frames == 1:
        return np.repeat(pts[:1], frames, axis=0)
    t = np.arange(frames) * (n - 1) / (frames - 1)
    k = np.minimum(np.floor(t).astype(np.int64), n - 2)
    f = (t - k)[:, None]
    return pts[k] + f * (pts[k + 1] - pts[k])


def _spline_polyline(pts: np.ndarray) -> np.ndarray:
    """Control points [n, 2] -> the vertices of the sampled curve [64 (n - 1) + 1, 2] (n >= 3); n < 3 as given."""
    n = len(pts)
    if n < 3:
        return pts
    a = (1.0 - SPLINE_TENSION) / 2.0
    tangents = np.zeros_like(pts)
    tangents[1:-1] = a * (pts[2:] - pts[:-2])
    start, end = pts[:-1], pts[1:]  # [S, 2], S = n - 1 segments
    b1 = start + tangents[:-1]
    b2 = end - tangents[1:]
    # The first and last segments are quadratic Beziers (protovis' ends), written as cubics.
    first_q = pts[1] - (2.0 / 3.0) * tangents[1]
    last_q = pts[-2] + (2.0 / 3.0) * tangents[-2]
    b1[0] = pts[0] + (2.0 / 3.0) * (first_q - pts[0])
    b2[0] = pts[1] + (2.0 / 3.0) * (first_q - pts[1])
    b1[-1] = pts[-2] + (2.0 / 3.0) * (last_q - pts[-2])
    b2[-1] = pts[-1] + (2.0 / 3.0) * (last_q - pts[-1])
    u = np.arange(SAMPLES_PER_SEGMENT + 1, dtype=np.float64) / SAMPLES_PER_SEGMENT  # [K + 1]
    v = 1.0 - u
    weights = np.stack([v**3, 3 * v**2 * u, 3 * v * u**2, u**3], axis=1)  # [K + 1, 4]
    control = np.stack([start, b1, b2, end], axis=1)  # [S, 4, 2]
    curve = np.einsum("kc,scd->skd", weights, control)  # [S, K + 1, 2]
    return np.concatenate([curve[:1, 0], curve[:, 1:].reshape(-1, 2)], axis=0)  # [S * K + 1, 2]


def _resample_by_arc_length(poly: np.ndarray, frames: int, aspect: float) -> np.ndarray:
    steps = np.diff(poly, axis=0) * np.array([aspect, 1.0])
    pieces = np.hypot(steps[:, 0], steps[:, 1])  # [V - 1]
    if frames == 1 or len(poly) == 1 or pieces.sum() == 0.0:
        return np.repeat(poly[:1], frames, axis=0)
    cumulative = np.concatenate([[0.0], np.cumsum(pieces)])  # [V]
    total = cumulative[-1]
    targets = total * np.arange(frames) / (frames - 1)
    k = np.clip(np.searchsorted(cumulative, targets, side="right") - 1, 0, len(pieces) - 1)
    safe = np.where(pieces[k] > 0, pieces[k], 1.0)
    f = np.where(pieces[k] > 0, np.clip((targets - cumulative[k]) / safe, 0.0, 1.0), 0.0)[:, None]
    out = poly[k] + f * (poly[k + 1] - poly[k])
    out[0], out[-1] = poly[0], poly[-1]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def gaussian_template() -> np.ndarray:
    """The 200 x 200 uint8 blob: Gaussian (sigma 40 px, centre pixel (100, 100)) times the disc of radius 99,
    scaled so that the centre is 255 and truncated to uint8, as the reference's ``gen_gaussian_heatmap``."""
    offsets = np.arange(TEMPLATE_SIZE, dtype=np.float64) - TEMPLATE_SIZE // 2
    d2 = offsets[:, None] ** 2 + offsets[None, :] ** 2  # [200, 200] squared distance to the centre pixel
    blob = np.exp(-0.5 * d2 / TEMPLATE_SIGMA**2).astype(np.float32)
    blob *= (d2 <= TEMPLATE_RADIUS**2).astype(np.float32)
    return (blob / blob.max() * 255).astype(np.uint8)


def blob_half_size(width: int, height: int) -> int:
    """Half the side of a blob's box in output pixels: int(50 * sqrt(H * W / (1280 * 720))), 24 at 600 x 382."""
    return int(50 * math.sqrt(height * width / (1280 * 720)))


def render_trajectory_video(trajectory: Trajectory, frames: int, width: int, height: int) -> torch.Tensor:
    """The control video for ``trajectory``: IMAGE float32 ``[frames, height, width, 3]`` in 0..1.

    Reference section 7 step 3: every track is resampled to ``frames`` points, converted to output pixels
    (x * width and y * height rounded half up). For each frame and track the box is y1 = max(y - cs, 0),
    y2 = min(y + cs, H - 1) (and likewise for x) with cs = :func:`blob_half_size`; when both sides exceed 3 px the
    template is resized bilinearly (cv2.INTER_LINEAR) into ``[y1:y2, x1:x2]`` and max-composited, so near a
    border the whole blob is squashed into the clipped box instead of being cropped. Tracks combine by per-pixel
    maximum; the grayscale result is replicated to 3 channels and divided by 255.
    """
    frames = _positive_int(frames, ("frames",), "a positive whole number of frames")
    width = _positive_int(width, ("width",), "a positive whole number of pixels")
    height = _positive_int(height, ("height",), "a positive whole number of pixels")
    paths = trajectory.resample(frames)  # [tracks, F, 2] normalised
    centres = np.floor(paths * np.array([width, height]) + 0.5).astype(np.int64)  # [tracks, F, 2] pixels
    half = blob_half_size(width, height)
    template = gaussian_template()
    canvas = np.zeros((frames, height, width), dtype=np.uint8)
    for track in centres:
        for frame, (x, y) in enumerate(track.tolist()):
            x1, x2 = max(x - half, 0), min(x + half, width - 1)
            y1, y2 = max(y - half, 0), min(y + half, height - 1)
            if x2 - x1 > 3 and y2 - y1 > 3:
                blob = cv2.resize(template, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
                region = canvas[frame, y1:y2, x1:x2]
                np.maximum(region, blob, out=region)
    logger.debug(
        "rendered %d track(s) into %d frames of %dx%d (blob half-size %d)", len(centres), frames, width, height, half
    )
    video = torch.from_numpy(canvas).to(torch.float32).div_(255.0)  # [F, H, W]
    return video.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()  # [F, H, W] -> [F, H, W, 3]
