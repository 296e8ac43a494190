"""The network of the built-in ``glyphs`` backend: a small conv U-Net conditioned on the letters of a word.

``GlyphsFlowNet.forward(x [B,1,H,W], sigma [B] in [0,1], tokens [B,L] int64) -> v [B,1,H,W]``.

Tokens: 0 = padding, 1..26 = letters A..Z, ``NULL_TOKEN`` (27) = the unconditional prompt used
for classifier-free guidance (every position null). Each position's embedding is a letter
embedding plus a learned position embedding, so an unseen word is a new combination of known
parts; one transformer layer mixes them, and the U-Net reads them by cross-attention at its two
lower levels plus their mean through FiLM. GroupNorm only: samples never interact.

Layout map (``layout_dim > 0``): besides attention, each letter's own embedding is painted over the
columns where a centred word of that many letters would put it (nominal letter width
:data:`LAYOUT_LETTER_WIDTH` px, narrower when the word would not fit), with two channels of the
column's position inside its letter; the map (``[B, layout_dim + 2, 1, W]``, constant over rows,
zero outside the word and for padding or the null prompt) is added through a 1x1 convolution at
every level. It tells each pixel which letter is nearby, which a conv net learns far faster than
an alignment through attention; the renders' real offsets and widths differ from the nominal ones
by a few pixels, which the convolutions' receptive field absorbs. Its last convolutions start at
zero, so a network trained without the map computes the same function when the map is added.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NULL_TOKEN", "GlyphsFlowNet", "encode_word", "sigma_embedding"]

NULL_TOKEN = 27
#: nominal width of one letter in the layout map, in pixels of the 96-pixel-wide image
LAYOUT_LETTER_WIDTH = 14.0


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


def layout_map(tokens: Tensor, embedding: nn.Embedding, width: int) -> Tensor:
    """The layout map of the module docstring: ``[B, D + 2, 1, width]`` for tokens ``[B, L]``
    (``D = embedding.embedding_dim``); channel ``D`` and ``D + 1`` are ``frac`` and ``1 - frac``
    of the column's position inside its letter."""
    letters = (tokens > 0) & (tokens < NULL_TOKEN)
    count = letters.sum(dim=1).clamp_min(1).to(torch.float32)  # [B]
    letter_width = torch.minimum(torch.full_like(count, LAYOUT_LETTER_WIDTH), (width - 6.0) / count)
    start = (width - count * letter_width) / 2.0
    columns = torch.arange(width, device=tokens.device, dtype=torch.float32) + 0.5
    place = (columns[None, :] - start[:, None]) / letter_width[:, None]  # [B, W]: letter index + fraction
    index = place.floor().long()
    inside = (index >= 0) & (index < count[:, None].long()) & letters.any(dim=1, keepdim=True)
    index = index.clamp(0, tokens.shape[1] - 1)
    column_tokens = torch.gather(tokens * letters, 1, index) * inside  # [B, W], 0 outside the word
    emb = embedding(column_tokens) * (column_tokens > 0)[..., None]  # padding and null: zero
    frac = (place - place.floor()) * inside
    extra = torch.stack([frac, (1.0 - frac) * inside], dim=-1)
    return torch.cat([emb, extra.to(emb.dtype)], dim=-1).permute(0, 2, 1)[:, :, None, :]


class GlyphsFlowNet(nn.Module):
    """Three-level U-Net on ``[B, 1, H, W]`` (H, W divisible by 4): channels ``c, 2c, 4c``."""

    def __init__(self, channels: int = 16, emb_dim: int = 128, ctx_dim: int = 64, max_len: int = 5, layout_dim: int = 0) -> None:
        super().__init__()
        self.config = {"channels": channels, "emb_dim": emb_dim, "ctx_dim": ctx_dim, "max_len": max_len}
        if layout_dim:
            self.config["layout_dim"] = layout_dim
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
        self.layout_dim = layout_dim
        if layout_dim:
            self.layout_emb = nn.Embedding(NULL_TOKEN + 1, layout_dim)
            self.layout_in = nn.ModuleList(nn.Conv2d(layout_dim + 2, ch, 1) for ch in (c, 2 * c, 4 * c, 2 * c, c))
            for conv in self.layout_in:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    def _layout(self, grid: Tensor | None, level: int, shape: tuple[int, ...]) -> Tensor | float:
        """The layout map's contribution at ``level`` (0-4: down1, down2, down3, up2, up1), resized to ``shape``."""
        if grid is None:
            return 0.0
        grid = F.adaptive_avg_pool2d(grid, (1, shape[-1])) if grid.shape[-1] != shape[-1] else grid
        return self.layout_in[level](grid).expand(-1, -1, shape[-2], -1)

    def forward(self, x: Tensor, sigma: Tensor, tokens: Tensor) -> Tensor:
        ctx = self.letter_emb(tokens) + self.pos_emb[None, : tokens.shape[1]].to(x.dtype)
        ctx = self.ctx_layer(ctx)
        emb = self.sigma_mlp(sigma_embedding(sigma, self.emb_dim).to(x.dtype)) + self.ctx_to_emb(ctx.mean(1))
        grid = layout_map(tokens, self.layout_emb, x.shape[-1]).to(x.dtype) if self.layout_dim else None
        h0 = self.inp(x)
        h1 = self.down1(h0 + self._layout(grid, 0, h0.shape), emb)  # H x W, c
        h2 = F.avg_pool2d(h1, 2)
        h2 = self.attn2(self.down2(h2, emb) + self._layout(grid, 1, h2.shape[:1] + (2 * h1.shape[1],) + h2.shape[2:]), ctx)  # H/2, 2c
        h3 = F.avg_pool2d(h2, 2)
        h3 = self.attn3(self.down3(h3, emb) + self._layout(grid, 2, h3.shape[:1] + (2 * h2.shape[1],) + h3.shape[2:]), ctx)  # H/4, 4c
        h = self.attn_mid(self.mid(h3, emb), ctx)
        h = self.up3(torch.cat([h, h3], dim=1), emb)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.up2(torch.cat([h, h2], dim=1), emb)
        h = self.attn_up2(h + self._layout(grid, 3, h.shape), ctx)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.up1(torch.cat([h, h1], dim=1), emb)
        h = h + self._layout(grid, 4, h.shape)
        return self.out(F.silu(self.out_norm(h)))
