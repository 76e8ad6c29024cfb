"""The EasyAnimate V5.1 and V5 MMDiT (every variant: T2V, InP, Control, Control-Camera; 7B and 12B).

Attribute names equal the checkpoint keys of the original EasyAnimate layout (the text-stream projections of an
MMDiT block live in ``attn2``); ``loading.py`` converts diffusers-layout keys to these names.

Behaviour follows the code the released weights were trained with (reference section 2): the timestep is rounded
to bf16 before its embedding, the text tokens are not masked in attention, text tokens come first in the joint
sequence, and the non-MMDiT blocks of the 7B models pass the text tokens through ``attn1.to_out`` as well. V5
models project two text streams (Bert through ``text_proj``, mT5 through ``text_proj_t5``) into one sequence.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ROPE_FORMULAS, RopeFormula, apply_rotary, rotary_embedding_3d
from . import chunking
from .chunking import per_token
from .config import TransformerConfig
from .memory import execution_device, store_weights_in
from .ops import DEFAULT_OPS, LayerOps, fp32_layer_norm
from .teacache import TeaCache


def timestep_sinusoid(timestep: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: int) -> torch.Tensor:
    """[B] -> [B, dim] sinusoidal embedding in fp32 ([cos, sin] when flipped)."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device) / (half - freq_shift)
    args = timestep.float()[:, None] * exponent.exp()[None, :]
    parts = (args.cos(), args.sin()) if flip_sin_to_cos else (args.sin(), args.cos())
    return torch.cat(parts, dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, *, dtype, device, ops: LayerOps):
        super().__init__()
        self.linear_1 = ops.Linear(in_dim, out_dim, dtype=dtype, device=device)
        self.linear_2 = ops.Linear(out_dim, out_dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ModulatedNorm(nn.Module):
    """``norm1``/``norm2``: one timestep modulation for both streams, one shared fp32 LayerNorm."""

    def __init__(self, cond_dim: int, dim: int, eps: float, affine: bool, *, dtype, device, ops: LayerOps):
        super().__init__()
        self.linear = ops.Linear(cond_dim, 6 * dim, dtype=dtype, device=device)
        self.norm = ops.LayerNorm(dim, eps=eps, elementwise_affine=affine, dtype=dtype, device=device)  # in fp32

    def forward(self, video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor):
        shift, scale, gate, t_shift, t_scale, t_gate = self.linear(F.silu(temb)).unsqueeze(1).chunk(6, dim=2)
        video = per_token(lambda v: fp32_layer_norm(self.norm, v) * (1 + scale) + shift, video)
        text = fp32_layer_norm(self.norm, text) * (1 + t_scale) + t_shift
        return video, text, gate, t_gate


class AttentionProjections(nn.Module):
    """Q/K/V/out projections and per-head LayerNorm of one stream (``attn1`` video, ``attn2`` text)."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, dtype, device, ops: LayerOps):
        super().__init__()
        self.heads = heads
        self.to_q = ops.Linear(dim, heads * head_dim, dtype=dtype, device=device)
        self.to_k = ops.Linear(dim, heads * head_dim, dtype=dtype, device=device)
        self.to_v = ops.Linear(dim, heads * head_dim, dtype=dtype, device=device)
        self.to_out = nn.ModuleList([ops.Linear(heads * head_dim, dim, dtype=dtype, device=device)])
        self.norm_q = ops.LayerNorm(head_dim, eps=1e-6, dtype=dtype, device=device)
        self.norm_k = ops.LayerNorm(head_dim, eps=1e-6, dtype=dtype, device=device)

    # Per token: [B, N, D] -> [B, N, heads, head_dim] (the joint sequence is transposed for attention in one place).
    def q(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_q(self.to_q(x).unflatten(2, (self.heads, -1)))

    def k(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_k(self.to_k(x).unflatten(2, (self.heads, -1)))

    def v(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_v(x).unflatten(2, (self.heads, -1))


class FeedForward(nn.Module):
    """``net.0.proj`` -> tanh-GELU -> ``net.2``; index 1 (a dropout in the original) keeps the key numbering."""

    def __init__(self, dim: int, inner_dim: int, *, dtype, device, ops: LayerOps):
        super().__init__()
        proj_in = nn.Module()
        proj_in.proj = ops.Linear(dim, inner_dim, dtype=dtype, device=device)
        self.net = nn.ModuleList([proj_in, nn.Identity(), ops.Linear(inner_dim, dim, dtype=dtype, device=device)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](F.gelu(self.net[0].proj(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """One transformer block. MMDiT blocks (``attn2``/``txt_ff`` present) give the text stream its own weights."""

    def __init__(self, config: TransformerConfig, is_mmdit: bool, *, dtype, device, ops: LayerOps):
        super().__init__()
        dim, heads, head_dim = config.inner_dim, config.num_attention_heads, config.attention_head_dim
        self.attention = ops.attention
        kw = dict(dtype=dtype, device=device, ops=ops)
        norm_args = (config.time_embed_dim, dim, config.norm_eps, config.norm_elementwise_affine)
        self.norm1 = ModulatedNorm(*norm_args, **kw)
        self.attn1 = AttentionProjections(dim, heads, head_dim, **kw)
        self.attn2 = AttentionProjections(dim, heads, head_dim, **kw) if is_mmdit else None
        self.norm2 = ModulatedNorm(*norm_args, **kw)
        self.ff = FeedForward(dim, 4 * dim, **kw)
        self.txt_ff = FeedForward(dim, 4 * dim, **kw) if is_mmdit else None

    @staticmethod
    def _joint(text_part: torch.Tensor, video: torch.Tensor, project, rope=None) -> torch.Tensor:
        """``text_part`` [B, L_txt, heads, hd] followed by ``project(video)`` [B, N, heads, hd] (rotated when
        ``rope`` is given): the joint sequence as [B, heads, L_txt + N, hd], a transposed view of one buffer.

        Without autograd the video part is projected and rotated token chunk by token chunk straight into the
        buffer, so no whole per-stream copy exists beside it (chunking.py)."""
        if rope is not None:
            cos, sin = (t[None, :, None] for t in rope)  # [N, hd] -> [1, N, 1, hd]: tokens on dim 1, like video

            def part(x, c, s):
                return apply_rotary(project(x), c, s)

            args = (video, cos, sin)
        else:
            part, args = project, (video,)
        if not chunking.chunked():
            return torch.cat([text_part, part(*args)], dim=1).transpose(1, 2)
        n_text = text_part.shape[1]
        joint = text_part.new_empty((text_part.shape[0], n_text + video.shape[1], *text_part.shape[2:]))
        joint[:, :n_text] = text_part
        per_token(part, *args, out=joint[:, n_text:])
        return joint.transpose(1, 2)

    def forward(self, video, text, temb, rope):
        # Locals live until reassigned: each intermediate is deleted as soon as it is used, which lowers the
        # inference peak of the block (bench/README.md, "Activation memory"). Projections, norms and rotary work
        # per token, so the text and the video tokens are projected apart; the 7B's non-MMDiT blocks use attn1
        # and ff for both, as the original does.
        text_attn = self.attn2 if self.attn2 is not None else self.attn1
        # 1. Joint attention over [text, video], gated residual per stream.
        v_in, t_in, gate, t_gate = self.norm1(video, text, temb)
        n_text = t_in.shape[1]
        q = self._joint(text_attn.q(t_in), v_in, self.attn1.q, rope)  # [B, heads, L_txt + N, head_dim]
        k = self._joint(text_attn.k(t_in), v_in, self.attn1.k, rope)
        v = self._joint(text_attn.v(t_in), v_in, self.attn1.v)
        del v_in
        out = self.attention(q, k, v)
        del q, k, v  # out: [B, L_txt + N, heads, head_dim]
        video = per_token(lambda x, o: x + gate * self.attn1.to_out[0](o.flatten(2)), video, out[:, n_text:])
        text = text + t_gate * text_attn.to_out[0](out[:, :n_text].flatten(2))
        del out
        # 2. Feed-forward, gated residual per stream.
        v_in, t_in, gate, t_gate = self.norm2(video, text, temb)
        video = per_token(lambda x, h: x + gate * self.ff(h), video, v_in)
        del v_in
        text = text + t_gate * (self.txt_ff if self.txt_ff is not None else self.ff)(t_in)
        return video, text


class EasyAnimateTransformer(nn.Module):
    """``model(latents, timestep, text_states, *, inpaint_latents=None, control_latents=None) -> [B, 16, T, h, w]``.

    ``weight_dtype`` (fp8, say) stores the large linears of the blocks in another dtype than ``dtype``, chosen at
    build time; the layers of :attr:`HIGH_PRECISION` always store ``dtype``."""

    # Layers that stay in the model dtype under fp8 storage (DESIGN.md house style 4): the patch embedding, the
    # timestep and text projections, every norm and modulation (norm1/norm2.linear) and the output projection.
    HIGH_PRECISION: tuple[str, ...] = ("proj", "proj_out", "time_embedding.*", "text_proj*", "*norm*", "norm_out.*")
    REPEATED_BLOCKS = "transformer_blocks"  # what block streaming, regional compile and per-block fp8 work on

    def __init__(
        self,
        config: TransformerConfig,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        ops: LayerOps = DEFAULT_OPS,
        rope_formula: RopeFormula = "original",
        weight_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if rope_formula not in ROPE_FORMULAS:
            raise ValueError(f"rope_formula = {rope_formula!r}: expected one of {ROPE_FORMULAS}")
        self.config = config
        self.rope_formula = rope_formula
        dim, p = config.inner_dim, config.patch_size
        kw = dict(dtype=dtype, device=device)
        self.time_embedding = TimestepEmbedding(dim, config.time_embed_dim, ops=ops, **kw)
        self.proj = ops.Conv2d(config.in_channels, dim, kernel_size=p, stride=p, **kw)
        if config.add_norm_text_encoder:
            self.text_proj = nn.Sequential(
                ops.RMSNorm(config.text_embed_dim, **kw), ops.Linear(config.text_embed_dim, dim, **kw)
            )
        else:
            self.text_proj = ops.Linear(config.text_embed_dim, dim, **kw)
        # V5 only: the mT5 states get their own plain Linear (config validation refuses it beside the RMSNorm).
        if config.text_embed_dim_t5 is not None:
            self.text_proj_t5 = ops.Linear(config.text_embed_dim_t5, dim, **kw)
        else:
            self.text_proj_t5 = None
        self.transformer_blocks = nn.ModuleList(
            [DiTBlock(config, is_mmdit, ops=ops, **kw) for is_mmdit in config.is_mmdit]
        )
        self.norm_final = ops.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=config.norm_elementwise_affine,
                                        **kw)
        self.norm_out = nn.Module()
        self.norm_out.linear = ops.Linear(config.time_embed_dim, 2 * dim, **kw)
        self.norm_out.norm = ops.LayerNorm(dim, eps=config.norm_eps,
                                           elementwise_affine=config.norm_elementwise_affine, **kw)
        self.proj_out = ops.Linear(dim, p * p * config.out_channels, **kw)
        # The rotary tables of the last video size and device: every step of a run reuses them (not a buffer: they
        # are no weights, and a new size or device replaces them).
        self._rope_tables: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None
        if weight_dtype is not None:
            store_weights_in(self, weight_dtype, self.HIGH_PRECISION)

    def rope_tables(self, frames: int, grid_h: int, grid_w: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The 3D rotary cos and sin tables [frames * grid_h * grid_w, head_dim] (fp32) on ``device``, computed
        once per video size (they are built on the host in float64: per step that was host work and a copy that
        waits for the GPU)."""
        cfg, p = self.config, self.config.patch_size
        key = (frames, grid_h, grid_w, self.rope_formula, device)
        if self._rope_tables is None or self._rope_tables[0] != key:
            with torch.inference_mode(False):  # plain tensors: a run under inference_mode, then training, share them
                tables = rotary_embedding_3d(frames, grid_h, grid_w, cfg.attention_head_dim,
                                             canvas_w=cfg.sample_width // p, canvas_h=cfg.sample_height // p,
                                             formula=self.rope_formula, device=device)
            self._rope_tables = (key, tables)
        return self._rope_tables[1]

    def repeated_blocks(self) -> list[nn.Module]:
        return list(self.transformer_blocks)

    @property
    def dtype(self) -> torch.dtype:
        return self.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return execution_device(self)

    def activation_bytes(self, latent_shape: tuple[int, ...], text_tokens: int, step_cache: bool = False) -> int:
        """Estimated peak bytes of the activations of one inference forward on latents ``[B, C, T, h, w]`` with
        ``text_tokens`` text tokens (weights not included); ``step_cache``: with a TeaCache, which keeps three
        video-sized tensors more (the previous modulated input, the residual and the blocks' input).

        5 + 10 x (share of the video tokens in one token chunk) activations of ``[B, N + L, D]``: the real-width
        count of ``bench/activation_memory.py`` gave 5.1 to 7.2 activations with chunks of 7% to 29% of the video
        and 15 unchunked, which this formula meets or exceeds by up to 15%."""
        b, _, t, h, w = latent_shape
        p = self.config.patch_size
        tokens = t * (h // p) * (w // p)
        units = 5 + 10 * min(1.0, chunking.TOKEN_CHUNK / max(tokens, 1)) + (3 if step_cache else 0)
        return int(units * b * (tokens + text_tokens) * self.config.inner_dim * self.dtype.itemsize)

    def _check_inputs(self, latents, timestep, text_states, text_states_t5, extra: list[torch.Tensor]) -> None:
        cfg = self.config
        if latents.ndim != 5 or latents.shape[1] != cfg.out_channels:
            raise ValueError(f"latents have shape {tuple(latents.shape)}: expected [B, {cfg.out_channels}, T, h, w].")
        b, _, t, h, w = latents.shape
        if h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {cfg.patch_size}: "
                             f"use a pixel width and height that are multiples of {8 * cfg.patch_size}.")
        for name, tensor in zip(("inpaint_latents", "control_latents"), extra):
            if tensor is not None and (tensor.ndim != 5 or tensor.shape[0] != b or tensor.shape[2:] != (t, h, w)):
                raise ValueError(f"{name} have shape {tuple(tensor.shape)}: expected [{b}, C, {t}, {h}, {w}].")
        got = cfg.out_channels + sum(x.shape[1] for x in extra if x is not None)
        wants_inpaint = {"inp": True, "t2v": False, "control": False, "control_camera": False}.get(cfg.variant)
        if got != cfg.in_channels or (wants_inpaint is not None and wants_inpaint != (extra[0] is not None)):
            raise ValueError(
                f"the transformer takes {cfg.in_channels} input channels ({cfg.variant_description}) but got {got} "
                f"(latents {cfg.out_channels}"
                + "".join(f" + {n} {x.shape[1]}" for n, x in zip(("inpaint", "control"), extra) if x is not None)
                + f"). {cfg.expected_inputs}"
            )
        if text_states.ndim != 3 or text_states.shape[0] != b or text_states.shape[2] != cfg.text_embed_dim:
            raise ValueError(f"text_states have shape {tuple(text_states.shape)}: expected [{b}, L, "
                             f"{cfg.text_embed_dim}] (hidden states of the model's own text encoder).")
        if cfg.text_embed_dim_t5 is None and text_states_t5 is not None:
            raise ValueError(f"text_states_t5 were given to the {cfg.variant_description}, which has one text "
                             f"encoder (Qwen2-VL): pass only text_states.")
        if cfg.text_embed_dim_t5 is not None and (
            text_states_t5 is None or text_states_t5.ndim != 3 or text_states_t5.shape[0] != b
            or text_states_t5.shape[2] != cfg.text_embed_dim_t5
        ):
            got = "none" if text_states_t5 is None else f"shape {tuple(text_states_t5.shape)}"
            raise ValueError(f"text_states_t5: {got}; the {cfg.variant_description} expects [{b}, L, "
                             f"{cfg.text_embed_dim_t5}] (the mT5 encoder's states, beside the Bert states).")
        if timestep.ndim > 1 or timestep.numel() not in (1, b):
            raise ValueError(f"timestep has shape {tuple(timestep.shape)}: expected a scalar or [{b}].")

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float,
        text_states: torch.Tensor,
        *,
        text_states_t5: torch.Tensor | None = None,
        inpaint_latents: torch.Tensor | None = None,
        control_latents: torch.Tensor | None = None,
        step_cache: TeaCache | None = None,
        cache_key: object = None,
    ) -> torch.Tensor:
        """``text_states`` [B, L, text_embed_dim]: Qwen2-VL states (V5.1) or Bert states (V5); ``text_states_t5``
        [B, L5, text_embed_dim_t5]: the mT5 states, V5 only. ``step_cache`` (one per sampling run) may replace steps
        5-6 by the residual of an earlier step; ``cache_key`` names the batch layout its residuals are kept under
        (default: the batch size)."""
        cfg, p = self.config, self.config.patch_size
        timestep = torch.as_tensor(timestep, device=latents.device)
        self._check_inputs(latents, timestep, text_states, text_states_t5, [inpaint_latents, control_latents])
        b, c_out, t, h, w = latents.shape
        gh, gw = h // p, w // p
        dtype = self.dtype

        # 1. Timestep embedding; the weights were trained with timesteps rounded to bf16.
        step_time = float(timestep.reshape(-1)[0]) if step_cache is not None else None  # before rounding
        timestep = timestep.reshape(-1).expand(b).to(torch.bfloat16)
        temb = timestep_sinusoid(timestep, cfg.inner_dim, cfg.flip_sin_to_cos, cfg.freq_shift).to(dtype)
        temb = self.time_embedding(temb)  # [B, time_embed_dim]

        # 2. Channel concatenation: noisy latents, then inpaint, then control channels.
        x = torch.cat([latents] + [e for e in (inpaint_latents, control_latents) if e is not None], dim=1).to(dtype)

        # 3. Per-frame patch embedding.
        x = x.transpose(1, 2).flatten(0, 1)  # [B, C, T, h, w] -> [B*T, C, h, w]
        x = self.proj(x)  # [B*T, D, gh, gw]
        video = x.unflatten(0, (b, t)).flatten(3).permute(0, 1, 3, 2).flatten(1, 2)  # -> [B, T*gh*gw, D]
        del x  # a copy: the patch embedding's output would otherwise stay alive through every block

        # 4. Text projection (RMSNorm first in V5.1). V5: Bert tokens first, then mT5 tokens, no mask.
        text = self.text_proj(text_states.to(dtype))  # [B, L, D]
        if self.text_proj_t5 is not None:
            text = torch.cat([text, self.text_proj_t5(text_states_t5.to(dtype))], dim=1)  # -> [B, L + L5, D]

        # 5-6. Blocks and output norms, or the residual a TeaCache kept of them (steps 5-6 of an earlier step).
        residual, key, blocks_in = None, b if cache_key is None else cache_key, None
        if step_cache is not None:
            modulated = self.transformer_blocks[0].norm1(video, text, temb)[0]
            residual = step_cache.reuse(step_time, modulated, key)
            del modulated
            blocks_in = video if residual is None else None
        if residual is not None:
            video = video + residual
        else:
            # 5. Blocks with the 3D rotary embedding on the video tokens.
            rope = self.rope_tables(t, gh, gw, video.device)
            for block in self.transformer_blocks:
                video, text = block(video, text, temb, rope)
            # 6. Output norms (norm_final is per token, so the text tokens can be left out).
            video = self.norm_final(video)
            shift, scale = self.norm_out.linear(F.silu(temb)).unsqueeze(1).chunk(2, dim=2)
            video = self.norm_out.norm(video) * (1 + scale) + shift
            if blocks_in is not None:
                step_cache.store(key, video - blocks_in)
                del blocks_in
        video = self.proj_out(video)  # 6. output projection: [B, N, p*p*C]

        # 7. Unpatchify; the output features are ordered (c, py, px).
        video = video.reshape(b, t, gh, gw, c_out, p, p).permute(0, 4, 1, 2, 5, 3, 6)  # [B, C, T, gh, p, gw, p]
        return video.reshape(b, c_out, t, h, w)
