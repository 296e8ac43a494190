"""The network of the built-in ``glyphs`` backend: a small conv U-Net conditioned on the letters of a word.

``GlyphsFlowNet.forward(x [B,1,H,W], sigma [B] in [0,1], tokens [B,L] int64) -> v [B,1,H,W]``.

Tokens: 0 = padding, 1..26 = letters A..Z, ``NULL_TOKEN`` (27) = the unconditional prompt used
for classifier-free guidance (every position null). Each position's embedding is a letter
embedding plus a learned position embedding, so an unseen word is a new combination of known
parts; one transformer layer mixes them, and the U-Net reads them by cross-attention at its two
lower levels plus their mean through FiLM. GroupNorm only: samples never interact.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NULL_TOKEN", "GlyphsFlowNet", "encode_word", "sigma_embedding"]

NULL_TOKEN = 27


def encode_word(word: str, length: int) -> list[int]:
    """Token ids of an upper-case word, padded with 0 to ``length``."""
    ids = [ord(c) - ord("A") + 1 for c in word]
    return ids + [0] * (length - len(ids))


def sigma_embedding(sigma: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of ``1000 * sigma``: ``[B] -> [B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
    angles = 1000.0 * sigma.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block with FiLM (scale, shift) from the embedding."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1.0 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class _CrossAttention(nn.Module):
    """Pixels (queries) attend to the word's token features (keys/values); residual."""

    def __init__(self, channels: int, ctx_dim: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.attn = nn.MultiheadAttention(channels, heads, kdim=ctx_dim, vdim=ctx_dim, batch_first=True)
        # 2D positional features of the query pixels: where a letter goes depends on where it is
        self.pos = nn.Conv2d(2, channels, 1)

    def forward(self, x: Tensor, ctx: Tensor) -> Tensor:
        b, c, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"))[None].expand(b, 2, h, w)
        q = (self.norm(x) + self.pos(grid)).flatten(2).transpose(1, 2)
        out, _ = self.attn(q, ctx, ctx, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class GlyphsFlowNet(nn.Module):
    """Three-level U-Net on ``[B, 1, H, W]`` (H, W divisible by 4): channels ``c, 2c, 4c``."""

    def __init__(self, channels: int = 16, emb_dim: int = 128, ctx_dim: int = 64, max_len: int = 5) -> None:
        super().__init__()
        self.config = {"channels": channels, "emb_dim": emb_dim, "ctx_dim": ctx_dim, "max_len": max_len}
        c = channels
        self.emb_dim = emb_dim
        self.max_len = max_len
        self.sigma_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.letter_emb = nn.Embedding(NULL_TOKEN + 1, ctx_dim)
        self.pos_emb = nn.Parameter(torch.randn(max_len, ctx_dim) * 0.02)
        self.ctx_layer = nn.TransformerEncoderLayer(ctx_dim, 4, 2 * ctx_dim, dropout=0.0, batch_first=True)
        self.ctx_to_emb = nn.Linear(ctx_dim, emb_dim)
        self.inp = nn.Conv2d(1, c, 3, padding=1)
        self.down1 = _ResBlock(c, c, emb_dim)
        self.down2 = _ResBlock(c, 2 * c, emb_dim)
        self.attn2 = _CrossAttention(2 * c, ctx_dim)
        self.down3 = _ResBlock(2 * c, 4 * c, emb_dim)
        self.attn3 = _CrossAttention(4 * c, ctx_dim)
        self.mid = _ResBlock(4 * c, 4 * c, emb_dim)
        self.attn_mid = _CrossAttention(4 * c, ctx_dim)
        self.up3 = _ResBlock(8 * c, 4 * c, emb_dim)
        self.up2 = _ResBlock(6 * c, 2 * c, emb_dim)
        self.attn_up2 = _CrossAttention(2 * c, ctx_dim)
        self.up1 = _ResBlock(3 * c, c, emb_dim)
        self.out_norm = nn.GroupNorm(8, c)
        self.out = nn.Conv2d(c, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, sigma: Tensor, tokens: Tensor) -> Tensor:
        ctx = self.letter_emb(tokens) + self.pos_emb[None, : tokens.shape[1]].to(x.dtype)
        ctx = self.ctx_layer(ctx)
        emb = self.sigma_mlp(sigma_embedding(sigma, self.emb_dim).to(x.dtype)) + self.ctx_to_emb(ctx.mean(1))
        h1 = self.down1(self.inp(x), emb)  # H x W, c
        h2 = self.attn2(self.down2(F.avg_pool2d(h1, 2), emb), ctx)  # H/2, 2c
        h3 = self.attn3(self.down3(F.avg_pool2d(h2, 2), emb), ctx)  # H/4, 4c
        h = self.attn_mid(self.mid(h3, emb), ctx)
        h = self.up3(torch.cat([h, h3], dim=1), emb)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.attn_up2(self.up2(torch.cat([h, h2], dim=1), emb), ctx)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.up1(torch.cat([h, h1], dim=1), emb)
        return self.out(F.silu(self.out_norm(h)))
