"""Camera paths for the Control-Camera model: presets, pose files, Plucker embedding.

Convention (CameraCtrl's, which the Control-Camera weights were trained with): a pose is the 3x4 world-to-camera
matrix [R|t], x_cam = R x_world + t, with OpenCV camera axes (x right, y down, z forward). The camera centre is
C = -R^T t and the viewing direction is R^T (0, 0, 1), the third row of R. Intrinsics fx, fy, cx, cy are normalised
by the image width and height. ``camera_presets/README.md`` explains the preset signs.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .atomic_files import write_text
from .checks import finite_number

logger = logging.getLogger(__name__)

PRESETS_DIR = Path(__file__).resolve().parents[1] / "camera_presets"
PRESETS_FILE = PRESETS_DIR / "presets.json"
BASE_ANGLE = math.pi / 3  # radians per preset angle unit at speed 1
BASE_TRANSLATION = 1.5  # world units per preset translation unit at speed 1
DEFAULT_INTRINSICS = (0.474812461, 0.844111024, 0.5, 0.5)  # the reference CameraTrajectory node's defaults
V51_WORKFLOW_INTRINSICS = (0.532139961, 0.946026558, 0.5, 0.5)  # the v5.1 camera workflow (RealEstate10K values)
SOURCE_ASPECT = 16 / 9  # the reference assumes pose intrinsics come from 1280x720 video
CONTROL_CAMERA_SCALE = 6.0
POSE_FILE_VALUES = 19
_POSE_FILE_LAYOUT = "timestamp fx fy cx cy 0 0 and the 12 numbers of the world-to-camera matrix [R|t], row-major"
_PRESET_FIELDS = {"angle", "translation", "pivot_distance", "description"}

Rotation = Literal["linear", "slerp"]


def _pose_problem(pose: Sequence[float], intrinsics: Sequence[float]) -> str | None:
    """Why a pose cannot be used, or None."""
    if not all(math.isfinite(v) for v in (*pose, *intrinsics)):
        return "every value must be a finite number"
    if intrinsics[0] <= 0 or intrinsics[1] <= 0:
        return f"fx and fy must be positive, got fx={intrinsics[0]!r}, fy={intrinsics[1]!r}"
    r = pose
    det = (r[0] * (r[5] * r[10] - r[6] * r[9]) - r[1] * (r[4] * r[10] - r[6] * r[8])
           + r[2] * (r[4] * r[9] - r[5] * r[8]))
    if abs(det) < 1e-9:
        return "the rotation part of the world-to-camera matrix is singular"
    return None


@dataclass(frozen=True)
class CameraPath:
    """One pose per frame. ``poses[i]`` holds the 12 numbers of frame i's world-to-camera [R|t], row-major;
    ``intrinsics[i]`` is (fx, fy, cx, cy) normalised by width and height; ``timestamps`` are carried for pose files
    (the model ignores them). Build one with :meth:`from_matrices`, a preset function or :func:`read_pose_file`."""

    poses: tuple[tuple[float, ...], ...]
    intrinsics: tuple[tuple[float, float, float, float], ...]
    timestamps: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        poses = tuple(tuple(float(v) for v in row) for row in self.poses)
        intrinsics = tuple(tuple(float(v) for v in row) for row in self.intrinsics)
        timestamps = tuple(float(v) for v in self.timestamps) or (0.0,) * len(poses)
        if not poses:
            raise ValueError("A camera path needs at least one pose.")
        if any(len(row) != 12 for row in poses) or any(len(row) != 4 for row in intrinsics):
            raise ValueError("Each pose needs 12 numbers ([R|t] row-major) and each intrinsics entry 4 "
                             "(fx, fy, cx, cy).")
        if not len(poses) == len(intrinsics) == len(timestamps):
            raise ValueError(f"A camera path needs one intrinsics entry and one timestamp per pose: got {len(poses)} "
                             f"poses, {len(intrinsics)} intrinsics, {len(timestamps)} timestamps.")
        for i, (pose, intr) in enumerate(zip(poses, intrinsics)):
            problem = _pose_problem(pose, intr)
            if problem:
                raise ValueError(f"Camera path frame {i}: {problem}.")
        object.__setattr__(self, "poses", poses)
        object.__setattr__(self, "intrinsics", intrinsics)
        object.__setattr__(self, "timestamps", timestamps)

    @classmethod
    def from_matrices(cls, w2c: Any, intrinsics: Sequence[float] | Any = DEFAULT_INTRINSICS,
                      timestamps: Sequence[float] | None = None) -> CameraPath:
        """``w2c``: [F, 3, 4] or [F, 4, 4] (tensor, array or nested lists); ``intrinsics``: (fx, fy, cx, cy) for
        every frame or [F, 4]."""
        matrices = torch.as_tensor(w2c, dtype=torch.float64)
        if matrices.ndim != 3 or matrices.shape[1:] not in ((3, 4), (4, 4)):
            raise ValueError("Expected world-to-camera matrices of shape [F, 3, 4] or [F, 4, 4], "
                             f"got {tuple(matrices.shape)}.")
        frames = matrices.shape[0]
        intr = torch.as_tensor(intrinsics, dtype=torch.float64)
        intr = intr.expand(frames, 4) if intr.ndim == 1 else intr
        return cls(tuple(map(tuple, matrices[:, :3].reshape(frames, 12).tolist())), tuple(map(tuple, intr.tolist())),
                   tuple(timestamps) if timestamps is not None else ())

    def __len__(self) -> int:
        return len(self.poses)

    def __getitem__(self, index: slice) -> CameraPath:
        if not isinstance(index, slice):
            raise TypeError("CameraPath supports slices only, e.g. path[:49].")
        return CameraPath(self.poses[index], self.intrinsics[index], self.timestamps[index])

    def w2c(self) -> torch.Tensor:
        """[F, 3, 4] float64 world-to-camera matrices."""
        return torch.tensor(self.poses, dtype=torch.float64).reshape(-1, 3, 4)

    def intrinsics_tensor(self) -> torch.Tensor:
        """[F, 4] float64 (fx, fy, cx, cy), normalised."""
        return torch.tensor(self.intrinsics, dtype=torch.float64)

    def centers(self) -> torch.Tensor:
        """[F, 3] camera centres in world coordinates, C = -R^T t."""
        w2c = self.w2c()
        return -(w2c[:, :, :3].transpose(1, 2) @ w2c[:, :, 3:])[..., 0]

    def view_directions(self) -> torch.Tensor:
        """[F, 3] optical axes in world coordinates, R^T (0, 0, 1)."""
        return self.w2c()[:, 2, :3]


@dataclass(frozen=True)
class CameraPreset:
    """A motion from ``presets.json``: angle and translation in preset units (see BASE_ANGLE, BASE_TRANSLATION),
    and an optional pivot on the first frame's optical axis that the rotation turns around (an orbit)."""

    name: str
    angle: tuple[float, float, float]
    translation: tuple[float, float, float]
    pivot_distance: float = 0.0
    description: str = ""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"duplicate key(s) {duplicates}")
    return dict(pairs)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_presets(path: str | Path = PRESETS_FILE) -> dict[str, CameraPreset]:
    """Read and validate a presets file; returns a new dict, in file order. Errors name the file, preset and field."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}.") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}; every name must appear once.") from exc
    if not isinstance(raw, dict) or raw.get("format_version") != 1 or not isinstance(raw.get("presets"), dict):
        raise ValueError(f"{path}: expected an object with \"format_version\": 1 and a \"presets\" object.")
    presets = {}
    for name, entry in raw["presets"].items():
        where = f"{path}: preset {name!r}"
        if not name.strip():
            raise ValueError(f"{path}: a preset has an empty name.")
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object with \"angle\" and \"translation\", got {entry!r}.")
        unknown = sorted(set(entry) - _PRESET_FIELDS)
        if unknown:
            raise ValueError(f"{where}, field {unknown[0]!r}: unknown field (allowed: {sorted(_PRESET_FIELDS)}).")
        for field in ("angle", "translation"):
            value = entry.get(field)
            if not (isinstance(value, list) and len(value) == 3 and all(_number(v) for v in value)):
                raise ValueError(f"{where}, field {field!r}: expected a list of 3 finite numbers [x, y, z], "
                                 f"got {value!r}.")
        pivot = entry.get("pivot_distance", 0.0)
        if not (_number(pivot) and pivot >= 0):
            raise ValueError(f"{where}, field 'pivot_distance': expected a number >= 0, got {pivot!r}.")
        description = entry.get("description", "")
        if not isinstance(description, str):
            raise ValueError(f"{where}, field 'description': expected a string, got {description!r}.")
        presets[name] = CameraPreset(name, tuple(float(v) for v in entry["angle"]),
                                     tuple(float(v) for v in entry["translation"]), float(pivot), description)
    if not presets:
        raise ValueError(f"{path}: the \"presets\" object is empty.")
    logger.debug("Loaded %d camera presets from %s", len(presets), path)
    return presets


def preset_names(path: str | Path = PRESETS_FILE) -> list[str]:
    """The preset names in file order."""
    return list(load_presets(path))


def _rotation_xyz(angles: torch.Tensor) -> torch.Tensor:
    """[F, 3] angles (x, y, z) in radians -> [F, 3, 3] Rz @ Ry @ Rx."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(angles[:, 0]), torch.zeros_like(angles[:, 0])

    def stack(*rows):
        return torch.stack([torch.stack(row, -1) for row in rows], -2)

    rx = stack((one, zero, zero), (zero, cos[:, 0], -sin[:, 0]), (zero, sin[:, 0], cos[:, 0]))
    ry = stack((cos[:, 1], zero, sin[:, 1]), (zero, one, zero), (-sin[:, 1], zero, cos[:, 1]))
    rz = stack((cos[:, 2], -sin[:, 2], zero), (sin[:, 2], cos[:, 2], zero), (zero, zero, one))
    return rz @ (ry @ rx)


def _check_frames(frames: Any, what: str = "frames") -> int:
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {frames!r}.")
    return frames


def _lookup(name: str, presets: Mapping[str, CameraPreset] | None) -> CameraPreset:
    presets = load_presets() if presets is None else presets
    if name not in presets:
        raise ValueError(f"Unknown camera preset {name!r}; choose one of {list(presets)}.")
    return presets[name]


def _preset_motion(chosen: Sequence[CameraPreset], frames: int, speed: float) -> torch.Tensor:
    """The reference ``get_camera_motion`` for the summed angle and translation vectors -> [F, 3, 4].
    A preset with a pivot also adds (I - R_own) p, p = (0, 0, d), which keeps p fixed in the picture."""
    if not math.isfinite(speed):
        raise ValueError(f"speed must be a finite number, got {speed!r}.")
    # i/n rather than i/(n-1): the last frame stops short of the full motion (reference quirk 13, kept for parity).
    ramp = (torch.arange(frames, dtype=torch.float64) / frames * speed)[:, None]  # [F, 1]
    angle = torch.tensor([p.angle for p in chosen], dtype=torch.float64).sum(0)
    translation = ramp * BASE_TRANSLATION * torch.tensor([p.translation for p in chosen], dtype=torch.float64).sum(0)
    for preset in chosen:
        if preset.pivot_distance:
            own = _rotation_xyz(ramp * BASE_ANGLE * torch.tensor(preset.angle, dtype=torch.float64))
            pivot = torch.tensor([0.0, 0.0, preset.pivot_distance], dtype=torch.float64)
            translation = translation + pivot - own @ pivot
    return torch.cat([_rotation_xyz(ramp * BASE_ANGLE * angle), translation[:, :, None]], dim=2)


def preset_path(name: str, frames: int, speed: float = 1.0, fx: float = DEFAULT_INTRINSICS[0],
                fy: float = DEFAULT_INTRINSICS[1], cx: float = 0.5, cy: float = 0.5,
                presets: Mapping[str, CameraPreset] | None = None) -> CameraPath:
    """One preset over ``frames`` frames, as the reference CameraBasic node (theta = i/n * speed * pi/3 * angle,
    R = Rz Ry Rx, t = i/n * speed * 1.5 * T). ``presets`` defaults to ``camera_presets/presets.json``."""
    for key, value in (("fx", fx), ("fy", fy)):
        finite_number(key, value, low=0.0, low_open=True, hint="A focal length as a share of the image size.")
    for key, value in (("cx", cx), ("cy", cy)):
        finite_number(key, value, hint="0.5 is the image centre.")
    motion = _preset_motion([_lookup(name, presets)], _check_frames(frames), speed)
    return CameraPath.from_matrices(motion, (fx, fy, cx, cy))


def _relative(path: CameraPath) -> tuple[torch.Tensor, torch.Tensor]:
    """([F, 4, 4] motion relative to the first frame, [4, 4] first w2c): w2c_i = relative_i @ first."""
    w2c = _to_4x4(path.w2c())
    return w2c @ torch.linalg.inv(w2c[0]), w2c[0]


def _to_4x4(w2c: torch.Tensor) -> torch.Tensor:
    """[F, 3, 4] -> [F, 4, 4]."""
    bottom = torch.zeros(w2c.shape[0], 1, 4, dtype=w2c.dtype, device=w2c.device)
    bottom[:, 0, 3] = 1
    return torch.cat([w2c, bottom], dim=1)


def split_combination(text: str) -> list[str]:
    """``"Pan Up+Pan Left"`` -> the preset names; an empty string, or an empty name between '+' signs, is refused."""
    names = [name.strip() for name in text.split("+")]
    if not any(names):
        raise ValueError(f"camera combination {text!r} names no preset: give one or more preset names joined by "
                         f"'+', e.g. 'Pan Up+Pan Left' (presets: {', '.join(preset_names())}).")
    if not all(names):
        raise ValueError(f"camera combination {text!r} has an empty name between '+' signs: join preset names "
                         f"with single '+' signs, e.g. 'Pan Up+Pan Left'.")
    return names


def fit_to_frames(path: CameraPath, frames: int) -> CameraPath:
    """``path`` with ``frames`` poses: resampled over the whole motion (never cut) when its length differs, said in
    the log."""
    if len(path) != frames:
        logger.warning("The camera path has %d poses and the video %d frames: resampled to %d, so the whole motion "
                       "plays over the video. Give the camera node %d frames to avoid this.", len(path), frames,
                       frames, frames)
        path = resample(path, frames)
    return path


def combine(*items: str | CameraPath, frames: int | None = None, speed: float = 1.0,
            fx: float = DEFAULT_INTRINSICS[0], fy: float = DEFAULT_INTRINSICS[1], cx: float = 0.5, cy: float = 0.5,
            presets: Mapping[str, CameraPreset] | None = None) -> CameraPath:
    """Simultaneous motions. Preset names only: the reference CameraCombine (angle and translation vectors summed,
    then one motion generated). With paths (names are then expanded with ``frames``, ``speed`` and the intrinsics):
    each path's motion relative to its first frame is combined, rotations multiplied in argument order and
    translations summed, applied from the first path's first pose, with its intrinsics. For preset paths this equals
    the name rule whenever at most one of them rotates."""
    if not items:
        raise ValueError("combine needs at least one preset name or camera path.")
    if all(isinstance(item, str) for item in items):
        if frames is None:
            raise ValueError("combine needs frames=... when it is given only preset names.")
        motion = _preset_motion([_lookup(name, presets) for name in items], _check_frames(frames), speed)
        return CameraPath.from_matrices(motion, (fx, fy, cx, cy))
    if frames is None:
        frames = next(len(item) for item in items if isinstance(item, CameraPath))
    paths = [preset_path(item, frames, speed, fx, fy, cx, cy, presets) if isinstance(item, str) else item
             for item in items]
    if any(len(path) != len(paths[0]) for path in paths):
        raise ValueError(f"Combined camera paths must have the same length, got {[len(p) for p in paths]}; "
                         "resample them first.")
    relatives = [_relative(path)[0] for path in paths]
    rotation = reduce(torch.matmul, [rel[:, :3, :3] for rel in relatives])
    translation = sum(rel[:, :3, 3:] for rel in relatives)
    motion = _to_4x4(torch.cat([rotation, translation], dim=2)) @ _relative(paths[0])[1]
    return CameraPath.from_matrices(motion, paths[0].intrinsics_tensor(), paths[0].timestamps)


def join(first: CameraPath, second: CameraPath) -> CameraPath:
    """``second`` after ``first`` (the reference CameraJoin): each pose of the second path, taken relative to its own
    first pose, is applied after the last pose (R0, t0) of the first: R' = R1 R0, t' = t1 + R1 t0. For paths that
    start at the identity (all presets) this is exactly the reference. Length len(first) + len(second)."""
    relative, _ = _relative(second)
    moved = relative @ _to_4x4(first.w2c()[-1:])  # [F1, 4, 4]
    return CameraPath(first.poses + CameraPath.from_matrices(moved).poses, first.intrinsics + second.intrinsics,
                      first.timestamps + second.timestamps)


def join_to_length(paths: Sequence[CameraPath], total_frames: int, rotation: Rotation = "linear") -> CameraPath:
    """Join ``paths`` one after another, then resample the result to ``total_frames`` frames."""
    if not paths:
        raise ValueError("join_to_length needs at least one camera path.")
    return resample(reduce(join, paths), total_frames, rotation)


def _quat_from_matrix(m: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] -> [N, 4] unit quaternions (w, x, y, z), w >= 0. Each row of ``candidates`` is 4 q_k q for one k;
    the one with the largest |q_k| is the best conditioned."""
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.reshape(-1, 9).unbind(-1)
    diagonal = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    candidates = torch.stack([
        torch.stack([diagonal[:, 0], m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, diagonal[:, 1], m01 + m10, m02 + m20], -1),
        torch.stack([m02 - m20, m01 + m10, diagonal[:, 2], m12 + m21], -1),
        torch.stack([m10 - m01, m02 + m20, m12 + m21, diagonal[:, 3]], -1),
    ], 1)  # [N, 4, 4]
    q = candidates[torch.arange(m.shape[0]), diagonal.argmax(-1)]
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[:, :1] < 0, -q, q)


def _matrix_from_quat(q: torch.Tensor) -> torch.Tensor:
    """[N, 4] (w, x, y, z) -> [N, 3, 3]."""
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3)


def _quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def _quat_power(q: torch.Tensor, exponent: torch.Tensor | float) -> torch.Tensor:
    """q^s for unit quaternions with w >= 0: the same axis, s times the angle."""
    vector = q[:, 1:].norm(dim=-1)
    half = torch.atan2(vector, q[:, 0]) * exponent
    axis = q[:, 1:] / vector.clamp_min(1e-300)[:, None]
    return torch.cat([half.cos()[:, None], axis * half.sin()[:, None]], -1)


def with_speed(path: CameraPath, speed: float) -> CameraPath:
    """Scale a path's motion relative to its first frame: rotation angle (same axis) and translation times
    ``speed``. For one-axis presets this equals ``preset_path(..., speed=speed)``; prefer that for presets."""
    if not math.isfinite(speed):
        raise ValueError(f"speed must be a finite number, got {speed!r}.")
    relative, first = _relative(path)
    rotation = _matrix_from_quat(_quat_power(_quat_from_matrix(relative[:, :3, :3]), speed))
    motion = _to_4x4(torch.cat([rotation, relative[:, :3, 3:] * speed], dim=2)) @ first
    return CameraPath.from_matrices(motion, path.intrinsics_tensor(), path.timestamps)


def resample(path: CameraPath, frames: int, rotation: Rotation = "linear") -> CameraPath:
    """Resample to ``frames`` frames at positions j * (F - 1) / (frames - 1), as training does (linear, corners
    aligned). ``rotation="linear"`` interpolates all 12 matrix entries like training; ``"slerp"`` interpolates the
    rotation on the sphere. Translations, intrinsics and timestamps are always interpolated linearly."""
    frames = _check_frames(frames)
    if rotation not in ("linear", "slerp"):
        raise ValueError(f"rotation must be 'linear' or 'slerp', got {rotation!r}.")
    count = len(path)
    table = torch.cat([path.w2c().reshape(count, 12), path.intrinsics_tensor(),
                       torch.tensor(path.timestamps, dtype=torch.float64)[:, None]], dim=1)  # [F, 17]
    position = torch.arange(frames, dtype=torch.float64) * ((count - 1) / (frames - 1) if frames > 1 else 0.0)
    low = position.floor().long().clamp(max=count - 1)
    high = (low + 1).clamp(max=count - 1)
    weight = (position - low)[:, None]
    values = table[low] * (1 - weight) + table[high] * weight
    matrices = values[:, :12].reshape(frames, 3, 4)
    if rotation == "slerp":
        q = _quat_from_matrix(path.w2c()[:, :, :3])
        q_low, q_high = q[low], q[high]
        q_high = torch.where((q_low * q_high).sum(-1, keepdim=True) < 0, -q_high, q_high)
        delta = _quat_mul(q_low * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=q.dtype), q_high)
        delta = torch.where(delta[:, :1] < 0, -delta, delta)
        matrices[:, :, :3] = _matrix_from_quat(_quat_mul(q_low, _quat_power(delta, weight[:, 0])))
    return CameraPath.from_matrices(matrices, values[:, 12:16], values[:, 16].tolist())


def read_pose_file(path: str | Path) -> CameraPath:
    """Read a CameraCtrl / RealEstate10K pose file: the first line is ignored (a URL), then one pose per line,
    19 numbers: timestamp fx fy cx cy 0 0 r11 r12 r13 t1 r21 r22 r23 t2 r31 r32 r33 t3 (world-to-camera)."""
    if not str(path).strip():
        raise ValueError("No camera pose file given (the path is empty): give the path of a CameraCtrl / "
                         "RealEstate10K pose file (.txt).")
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give the path of a pose file (.txt) inside it, not the folder.")
    if not path.is_file():
        raise FileNotFoundError(f"Camera pose file {path} does not exist: check the path.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a text pose file ({exc}).") from exc
    except OSError as exc:
        raise ValueError(f"Cannot read the camera pose file {path}: {exc.strerror}.") from exc
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != POSE_FILE_VALUES:
            raise ValueError(f"{path} line {number} has {len(tokens)} values, expected {POSE_FILE_VALUES}: "
                             f"{_POSE_FILE_LAYOUT}.")
        row = []
        for column, token in enumerate(tokens, start=1):
            try:
                value = float(token)
            except ValueError:
                raise ValueError(f"{path} line {number}, column {column}: {token!r} is not a number.") from None
            if not math.isfinite(value):
                raise ValueError(f"{path} line {number}, column {column}: {token!r} is not a finite number.")
            row.append(value)
        problem = _pose_problem(row[7:], row[1:5])
        if problem:
            raise ValueError(f"{path} line {number}: {problem}.")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} has no poses: after the first line (a URL) it needs one line per frame with "
                         f"{POSE_FILE_VALUES} numbers: {_POSE_FILE_LAYOUT}.")
    logger.debug("Read %d camera poses from %s", len(rows), path)
    return CameraPath(tuple(tuple(r[7:]) for r in rows), tuple(tuple(r[1:5]) for r in rows), tuple(r[0] for r in rows))


def write_pose_file(path: str | Path, camera_path: CameraPath,
                    first_line: str = "# camera path (CameraCtrl / RealEstate10K pose format)") -> Path:
    """Write ``camera_path`` in the format :func:`read_pose_file` reads; numbers use repr so they read back exactly."""
    if "\n" in first_line or "\r" in first_line:
        raise ValueError("first_line must be a single line.")
    lines = [first_line]
    for stamp, intr, pose in zip(camera_path.timestamps, camera_path.intrinsics, camera_path.poses):
        lines.append(" ".join(repr(v) for v in (stamp, *intr, 0.0, 0.0, *pose)))
    return write_text(path, "\n".join(lines) + "\n")


def plucker_embedding(path: CameraPath, width: int, height: int, source_aspect: float = SOURCE_ASPECT,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Per-pixel Plucker rays [F, H, W, 6] float32 = [o x d, d], as the reference ``process_pose_params``."""
    _check_frames(width, "width")
    _check_frames(height, "height")
    # 1. Poses in float64 (the reference uses numpy): c2w = inv(w2c), then relative to frame 0: c2w'_i = w2c_0 c2w_i.
    w2c = _to_4x4(path.w2c())  # [F, 4, 4]
    relative = w2c[0] @ torch.linalg.inv(w2c)
    relative[0] = torch.eye(4, dtype=torch.float64)
    # 2. Intrinsics: keep square pixels for poses recorded at source_aspect (16:9), then scale to pixels.
    intrinsics = path.intrinsics_tensor()  # [F, 4]
    if source_aspect > width / height:
        intrinsics[:, 0] = height * source_aspect * intrinsics[:, 0] / width
    else:
        intrinsics[:, 1] = width / source_aspect * intrinsics[:, 1] / height
    pixel_k = (intrinsics * torch.tensor([width, height, width, height], dtype=torch.float64)).float().to(device)
    relative = relative.float().to(device)
    # 3. Rays through pixel centres, one frame at a time to bound memory.
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device) + 0.5,
                          torch.arange(width, dtype=torch.float32, device=device) + 0.5, indexing="ij")  # [H, W]
    out = torch.empty(len(path), height, width, 6, dtype=torch.float32, device=device)
    for f in range(len(path)):
        fx, fy, cx, cy = pixel_k[f]
        directions = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], dim=-1)  # [H, W, 3]
        directions = directions / directions.norm(dim=-1, keepdim=True)
        directions = directions @ relative[f, :3, :3].T
        origin = relative[f, :3, 3].expand_as(directions)
        out[f, ..., :3] = torch.linalg.cross(origin, directions, dim=-1)
        out[f, ..., 3:] = directions
    return out


def camera_control_channels(embedding: torch.Tensor, latent_frames: int, latent_height: int,
                            latent_width: int) -> torch.Tensor:
    """Plucker embedding [F, H, W, 6] -> the 6 control channels [1, 6, T, h, w]: frame 0 becomes latent frame 0,
    frames 1..F-1 become latent frames 1..T-1 (trilinear, as the reference ``resize_mask``), times 6.
    Pass exactly the video's frames (the reference cuts the embedding to the video length first)."""
    if embedding.ndim != 4 or embedding.shape[-1] != 6:
        raise ValueError(f"Expected a Plucker embedding [F, H, W, 6], got {tuple(embedding.shape)}.")
    for name, value in (("latent_frames", latent_frames), ("latent_height", latent_height),
                        ("latent_width", latent_width)):
        _check_frames(value, name)
    if latent_frames > 1 and embedding.shape[0] < 2:
        raise ValueError(f"{latent_frames} latent frames need a camera path of at least 2 frames, got 1.")
    video = embedding.permute(3, 0, 1, 2).unsqueeze(0)  # [F, H, W, 6] -> [1, 6, F, H, W]
    parts = [F.interpolate(video[:, :, :1], size=(1, latent_height, latent_width), mode="trilinear",
                           align_corners=False)]
    if latent_frames > 1:
        parts.append(F.interpolate(video[:, :, 1:], size=(latent_frames - 1, latent_height, latent_width),
                                   mode="trilinear", align_corners=False))
    return torch.cat(parts, dim=2) * CONTROL_CAMERA_SCALE
