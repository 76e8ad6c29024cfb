"""The 3D rotary position embedding of the EasyAnimate MMDiT.

The rotary grid squeezes every resolution into the 45x30 reference canvas the model was trained on ("resize-crop"
positional interpolation). Two formulas exist in the wild (reference section 15.2): the one the released weights were
trained with (diffusers <= 0.31, our default) and the linspace one of diffusers >= 0.32; they agree only on 3:2
landscape grids.
"""

from __future__ import annotations

from typing import Literal

import torch

RopeFormula = Literal["original", "linspace"]
ROPE_FORMULAS: tuple[str, ...] = ("original", "linspace")


def resize_crop_region(grid_h: int, grid_w: int, canvas_w: int, canvas_h: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where a (grid_h, grid_w) token grid lands on the reference canvas: ((top, left), (bottom, right)).

    Python's ``round`` (banker's rounding) is what the released code used, so it is kept.
    """
    if grid_h / grid_w > canvas_h / canvas_w:
        rh, rw = canvas_h, round(canvas_h / grid_h * grid_w)
    else:
        rw, rh = canvas_w, round(canvas_w / grid_w * grid_h)
    top, left = round((canvas_h - rh) / 2), round((canvas_w - rw) / 2)
    return (top, left), (top + rh, left + rw)


def _axis_positions(start: int, stop: int, n: int, formula: RopeFormula) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    if formula == "original":
        return start + (stop - start) * k / n
    return torch.linspace(start, stop * (n - 1) / n, n, dtype=torch.float64) if n > 1 else torch.tensor([float(start)],
                                                                                                          dtype=torch.float64)


def _axis_cos_sin(pos: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    # [n] -> [n, dim]; each frequency covers two adjacent channels.
    freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim)
    angles = torch.outer(pos, freqs)
    return angles.cos().repeat_interleave(2, dim=1), angles.sin().repeat_interleave(2, dim=1)


def rotary_embedding_3d(
    frames: int,
    grid_h: int,
    grid_w: int,
    head_dim: int,
    *,
    canvas_w: int = 45,
    canvas_h: int = 30,
    formula: RopeFormula = "original",
    theta: float = 10000.0,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each ``[frames * grid_h * grid_w, head_dim]`` in (t, y, x) token order, float32."""
    if formula not in ROPE_FORMULAS:
        raise ValueError(f"rope formula {formula!r}: expected one of {ROPE_FORMULAS}")
    (top, left), (bottom, right) = resize_crop_region(grid_h, grid_w, canvas_w, canvas_h)
    dim_t, dim_hw = head_dim // 4, head_dim // 8 * 3
    tables = [
        _axis_cos_sin(torch.arange(frames, dtype=torch.float64), dim_t, theta),
        _axis_cos_sin(_axis_positions(top, bottom, grid_h, formula), dim_hw, theta),
        _axis_cos_sin(_axis_positions(left, right, grid_w, formula), dim_hw, theta),
    ]
    out = []
    for part in (0, 1):  # cos, then sin
        t, h, w = (table[part] for table in tables)
        grid = torch.cat(
            [
                t[:, None, None, :].expand(frames, grid_h, grid_w, dim_t),
                h[None, :, None, :].expand(frames, grid_h, grid_w, dim_hw),
                w[None, None, :, :].expand(frames, grid_h, grid_w, dim_hw),
            ],
            dim=-1,
        )  # [T, gh, gw, head_dim]
        out.append(grid.reshape(frames * grid_h * grid_w, -1).to(device=device, dtype=torch.float32))
    return out[0], out[1]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x`` (last dim head_dim) by the tables ``cos``/``sin`` broadcast against it
    (``x`` [B, N, heads, head_dim] with tables [1, N, 1, head_dim] in the transformer, or [B, heads, N, head_dim]
    with [N, head_dim]); math in fp32."""
    xf = x.float()
    pairs = xf.unflatten(-1, (-1, 2))  # [..., head_dim/2, 2]
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return (xf * cos + rotated * sin).to(x.dtype)
