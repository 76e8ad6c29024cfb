"""The MMDiT against diffusers' EasyAnimateTransformer3DModel and against the reference description."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TINY_TRANSFORMER, diffusers_transformer, randomize_, save_original_layout, transformer_inputs

from easyanimate_core import chunking, load_transformer, transformer_config_from_dict
from easyanimate_core.attention import apply_rotary, resize_crop_region, rotary_embedding_3d
from easyanimate_core.ops import DEFAULT_OPS
from easyanimate_core.transformer import DiTBlock

VARIANTS = {"t2v": 16, "inp": 33, "control": 48, "control_camera": 38}


def _diffusers_out(model, latents, timestep, text, extra):
    with torch.no_grad():
        return model(latents, timestep, encoder_hidden_states=text, return_dict=False, **extra)[0]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("add_norm", [True, False], ids=["rmsnorm", "no-rmsnorm"])
def test_parity_with_diffusers_both_layouts(tmp_path, variant, add_norm):
    reference = diffusers_transformer(in_channels=VARIANTS[variant], add_norm_text_encoder=add_norm, num_layers=2,
                                      mmdit_layers=2)
    reference.save_pretrained(tmp_path / "diffusers" / "transformer", safe_serialization=True)
    save_original_layout(reference, tmp_path / "original" / "transformer")

    ours_from_diffusers = load_transformer(tmp_path / "diffusers", dtype=torch.float32)
    ours_from_original = load_transformer(tmp_path / "original" / "transformer", dtype=torch.float32)
    assert ours_from_diffusers.config.variant == variant
    # 3:2 latent grid (4 x 6 tokens): both RoPE formulas agree there (reference 15.2).
    latents, timestep, text, extra = transformer_inputs(ours_from_diffusers.config, h=8, w=12)
    expected = _diffusers_out(reference, latents, timestep, text, extra)
    with torch.no_grad():
        for ours in (ours_from_diffusers, ours_from_original):
            got = ours(latents, timestep, text, **extra)
            assert got.shape == (2, 16, 2, 8, 12)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mmdit_layers", [2, 1], ids=["mmdit", "7b-style"])
def test_token_chunked_inference_changes_no_value(tmp_path, monkeypatch, mmdit_layers):
    # Norms, modulation, rotary, feed-forward and residuals run in token chunks without autograd (chunking.py).
    reference = diffusers_transformer(in_channels=33, num_layers=2, mmdit_layers=mmdit_layers)
    reference.save_pretrained(tmp_path / "transformer")
    ours = load_transformer(tmp_path, dtype=torch.float32)
    latents, timestep, text, extra = transformer_inputs(ours.config, h=8, w=12)
    expected = _diffusers_out(reference, latents, timestep, text, extra)
    with torch.no_grad():
        whole = ours(latents, timestep, text, **extra)
        monkeypatch.setattr(chunking, "TOKEN_CHUNK", 5)  # 2 x 4 x 6 = 48 video tokens: 10 chunks, the last short
        chunked = ours(latents, timestep, text, **extra)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)  # fp32 GEMM blocking differs per shape
    torch.testing.assert_close(chunked, expected, atol=1e-4, rtol=1e-4)
    latents.requires_grad_(True)  # with autograd the whole tensors run: same values, gradients flow
    training = ours(latents, timestep, text, **extra)
    torch.testing.assert_close(training, whole, atol=1e-6, rtol=0)
    training.square().mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_linspace_rope_option_matches_diffusers_on_square_grid(tmp_path):
    reference = diffusers_transformer(in_channels=33)
    reference.save_pretrained(tmp_path / "transformer")
    latents, timestep, text, extra = transformer_inputs(reference.config, h=8, w=8)
    expected = _diffusers_out(reference, latents, timestep, text, extra)
    newer = load_transformer(tmp_path, dtype=torch.float32, rope_formula="linspace")
    original = load_transformer(tmp_path, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(newer(latents, timestep, text, **extra), expected, atol=1e-4, rtol=1e-4)
        # On a square grid the crop offset is not 0, so the released formula must give something else.
        assert (original(latents, timestep, text, **extra) - expected).abs().max() > 1e-3


@pytest.mark.parametrize(
    "pixels, grid, crop",
    [((384, 672), (24, 42), ((2, 0), (28, 45))), ((672, 384), (42, 24), ((0, 14), (30, 31))),
     ((512, 512), (32, 32), ((0, 8), (30, 38))), ((576, 1008), (36, 63), ((2, 0), (28, 45))),
     ((1024, 1024), (64, 64), ((0, 8), (30, 38)))],
)
def test_crop_region_matches_reference_table(pixels, grid, crop):
    assert (pixels[0] // 16, pixels[1] // 16) == grid
    assert resize_crop_region(*grid, canvas_w=45, canvas_h=30) == crop


def test_original_rope_formula_by_hand_on_square_grid():
    # 4 x 4 token grid: crop (0, 8) -> (30, 38); positions start + (stop - start) * k / n.
    cos, sin = rotary_embedding_3d(frames=2, grid_h=4, grid_w=4, head_dim=16)
    assert cos.shape == sin.shape == (2 * 4 * 4, 16)
    t, y, x = 1, 2, 3
    token = t * 16 + y * 4 + x
    pos_t, pos_h, pos_w = 1.0, 0 + 30 * 2 / 4, 8 + 30 * 3 / 4  # 1, 15, 30.5
    expected = []
    for pos, dim in ((pos_t, 4), (pos_h, 6), (pos_w, 6)):
        for j in range(dim // 2):
            angle = pos / 10000 ** (2 * j / dim)
            expected += [angle, angle]
    torch.testing.assert_close(cos[token], torch.tensor([math.cos(a) for a in expected]), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[token], torch.tensor([math.sin(a) for a in expected]), atol=1e-6, rtol=0)
    # The newer formula places the same grid differently (positions 8, 15.5... vs linspace to 38 * 3/4).
    cos_new, _ = rotary_embedding_3d(frames=2, grid_h=4, grid_w=4, head_dim=16, formula="linspace")
    assert (cos_new - cos).abs().max() > 0.1


def test_rotary_matches_complex_multiplication():
    x = torch.randn(1, 2, 5, 8)
    angles = torch.randn(5, 4)
    cos, sin = angles.cos().repeat_interleave(2, 1), angles.sin().repeat_interleave(2, 1)
    as_complex = torch.view_as_complex(x.reshape(1, 2, 5, 4, 2).contiguous())
    expected = torch.view_as_real(as_complex * torch.polar(torch.ones_like(angles), angles)).flatten(-2)
    torch.testing.assert_close(apply_rotary(x, cos, sin), expected, atol=1e-6, rtol=0)


def _reference_non_mmdit_block(block, video, text, temb, cos, sin):
    """A non-MMDiT block written from the reference description (sections 2.2 and 2.3), with explicit math."""
    heads = block.attn1.heads
    n_text = text.shape[1]

    def modulate(norm, v, t):
        s = F.linear(F.silu(temb), norm.linear.weight, norm.linear.bias)
        shift, scale, gate, t_shift, t_scale, t_gate = [c[:, None] for c in s.chunk(6, dim=1)]
        ln = lambda z: F.layer_norm(z, (z.shape[-1],), norm.norm.weight, norm.norm.bias, norm.norm.eps)  # noqa: E731
        return ln(v) * (1 + scale) + shift, ln(t) * (1 + t_scale) + t_shift, gate, t_gate

    def lin(layer, z):
        return z @ layer.weight.T + layer.bias

    def heads_ln(norm, z):
        z = z.reshape(z.shape[0], z.shape[1], heads, -1)
        z = F.layer_norm(z, (z.shape[-1],), norm.weight, norm.bias, 1e-6)
        return z

    def rope(z):  # z [B, N, heads, d]; adjacent pairs rotated by the table angles
        vid = z[:, n_text:]
        even, odd = vid[..., 0::2], vid[..., 1::2]
        c, s = cos[None, :, None, 0::2], sin[None, :, None, 0::2]
        rotated = torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2)
        return torch.cat([z[:, :n_text], rotated], dim=1)

    v_in, t_in, gate, t_gate = modulate(block.norm1, video, text)
    seq = torch.cat([t_in, v_in], dim=1)
    q = rope(heads_ln(block.attn1.norm_q, lin(block.attn1.to_q, seq)))
    k = rope(heads_ln(block.attn1.norm_k, lin(block.attn1.to_k, seq)))
    v = lin(block.attn1.to_v, seq).reshape(q.shape)
    weights = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(q.shape[-1]), dim=-1)
    attn = torch.einsum("bhnm,bmhd->bnhd", weights, v).flatten(2)
    attn = lin(block.attn1.to_out[0], attn)  # applied to text and video tokens alike
    video = video + gate * attn[:, n_text:]
    text = text + t_gate * attn[:, :n_text]
    v_in, t_in, gate, t_gate = modulate(block.norm2, video, text)

    def ff(z):
        return lin(block.ff.net[2], F.gelu(lin(block.ff.net[0].proj, z), approximate="tanh"))

    return video + gate * ff(v_in), text + t_gate * ff(t_in)


def test_non_mmdit_block_follows_reference_description():
    config = transformer_config_from_dict(dict(TINY_TRANSFORMER, num_layers=1, mmdit_layers=0), "diffusers")
    block = randomize_(DiTBlock(config, is_mmdit=False, dtype=torch.float32, device=None, ops=DEFAULT_OPS), seed=3)
    assert block.attn2 is None and block.txt_ff is None
    video, text, temb = torch.randn(2, 2 * 2 * 3, 32), torch.randn(2, 5, 32), torch.randn(2, 32)
    cos, sin = rotary_embedding_3d(2, 2, 3, 16)
    with torch.no_grad():
        got_video, got_text = block(video, text, temb, (cos, sin))
        exp_video, exp_text = _reference_non_mmdit_block(block, video, text, temb, cos, sin)
    torch.testing.assert_close(got_video, exp_video, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_text, exp_text, atol=1e-5, rtol=1e-5)


def test_7b_layout_differs_from_diffusers_only_through_text_out_projection(tmp_path):
    """3 blocks, 1 MMDiT: diffusers skips attn1.to_out on text tokens of non-MMDiT blocks; the original does not."""
    reference = diffusers_transformer(num_layers=3, mmdit_layers=1)
    reference.save_pretrained(tmp_path / "transformer")
    ours = load_transformer(tmp_path, dtype=torch.float32)
    assert [b.attn2 is not None for b in ours.transformer_blocks] == [True, False, False]
    latents, timestep, text, extra = transformer_inputs(ours.config)
    with torch.no_grad():
        assert (ours(latents, timestep, text) - _diffusers_out(reference, latents, timestep, text, extra)).abs().max() > 1e-3
        # With an identity out-projection in the non-MMDiT blocks the two agree again.
        for model_block, ref_block in zip(ours.transformer_blocks[1:], reference.transformer_blocks[1:]):
            for layer in (model_block.attn1.to_out[0], ref_block.attn1.to_out[0]):
                layer.weight.copy_(torch.eye(layer.weight.shape[0]))
                layer.bias.zero_()
        torch.testing.assert_close(ours(latents, timestep, text),
                                   _diffusers_out(reference, latents, timestep, text, extra), atol=1e-4, rtol=1e-4)


def test_timestep_is_rounded_to_bf16(tmp_path):
    reference = diffusers_transformer()
    reference.save_pretrained(tmp_path / "transformer")
    ours = load_transformer(tmp_path, dtype=torch.float32)
    latents, _, text, _ = transformer_inputs(ours.config)
    with torch.no_grad():
        a = ours(latents, torch.tensor([992.40, 984.60]), text)
        b = ours(latents, torch.tensor([992.0, 984.0]), text)
        c = ours(latents, torch.tensor([1000.0, 984.0]), text)  # the next bf16 value above 992 is 996
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (a - c).abs().max() > 0


def test_bad_inputs_name_what_is_expected(tmp_path):
    reference = diffusers_transformer(in_channels=33)
    reference.save_pretrained(tmp_path / "transformer")
    ours = load_transformer(tmp_path, dtype=torch.float32)
    latents, timestep, text, extra = transformer_inputs(ours.config)
    with pytest.raises(ValueError, match=r"33 input channels.*InP.*inpaint_latents \[B, 17"):
        ours(latents, timestep, text)
    with pytest.raises(ValueError, match=r"control"):
        ours(latents, timestep, text, control_latents=extra["inpaint_latents"])
    with pytest.raises(ValueError, match="multiples of 16"):
        ours(latents[..., :7], timestep, text, inpaint_latents=extra["inpaint_latents"][..., :7])
    with pytest.raises(ValueError, match=r"text_states.*\[2, L, 24\]"):
        ours(latents, timestep, text[..., :5], **extra)


def test_bf16_forward_runs_and_stays_close_to_fp32(tmp_path):
    reference = diffusers_transformer()
    reference.save_pretrained(tmp_path / "transformer")
    fp32 = load_transformer(tmp_path, dtype=torch.float32)
    bf16 = load_transformer(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    latents, timestep, text, _ = transformer_inputs(fp32.config)
    with torch.no_grad():
        full, half = fp32(latents, timestep, text), bf16(latents, timestep, text)
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().max() < 0.1 * full.abs().max()


def test_rotary_tables_are_built_once_per_size_and_serve_training_after_inference(tmp_path, monkeypatch):
    from easyanimate_core import transformer as transformer_module

    reference = diffusers_transformer()
    reference.save_pretrained(tmp_path / "transformer")
    ours = load_transformer(tmp_path, dtype=torch.float32)
    latents, timestep, text, _ = transformer_inputs(ours.config)
    with torch.inference_mode():
        expected = ours(latents, timestep, text)
    built = []
    real = transformer_module.rotary_embedding_3d
    monkeypatch.setattr(transformer_module, "rotary_embedding_3d", lambda *a, **k: built.append(a) or real(*a, **k))
    with torch.inference_mode():
        for _ in range(3):
            torch.testing.assert_close(ours(latents, timestep, text), expected, rtol=0, atol=0)
        assert built == []  # the tables of the first call serve every step of that size
        ours(latents[..., :8], timestep, text)  # another size builds its own
    assert len(built) == 1
    # tables made under inference_mode are plain tensors: a training step can save them for backward
    ours.requires_grad_(True)
    out = ours(latents[..., :8], timestep, text)
    out.square().mean().backward()
    assert ours.proj.weight.grad is not None
