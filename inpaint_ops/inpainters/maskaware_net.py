"""The ``maskaware`` network: a small mask-aware transformer inpainter (torch).

After the ideas of the Mask-Aware Transformer (MAT, Li et al., CVPR 2022), scaled down so it
trains on a laptop CPU at 128-256 px in minutes and grows by config on a GPU:

- a convolutional encoder embeds image + validity into tokens at 1/8 resolution; a token is
  valid when any pixel under it is;
- window attention in which only valid tokens are attended to, and a *dynamic* validity mask:
  after each block every token of a window that held a valid token becomes valid, so
  information walks into a large hole window by window instead of from zeros;
- blocks without LayerNorm and without a residual around attention (a learned fusion of input
  and attention output instead), so the near-zero tokens inside a hole are not renormalised into
  large values;
- a style input: a seeded noise vector mapped to per-channel modulations of the decoder, plus
  seeded per-pixel noise, so each variant can differ;
- a convolutional refinement stage over the composited coarse fill;
- a second head predicting the per-pixel scale ``b`` of a Laplace distribution around the fill
  (trained by its likelihood): ``variation`` draws seeded, calibrated detail of that size.

Images are float in [0, 1] outside and [-1, 1] inside; ``valid`` is 1 where pixels are known.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (the usual torch spelling)
from torch import Tensor, nn


@dataclass(frozen=True)
class MaskAwareConfig:
    """Sizes of the network; stored in every checkpoint's metadata."""

    channels: int = 32  # convolution width at full resolution (x2, x4 deeper)
    dim: int = 128  # token width at 1/8 resolution
    depth: int = 4  # transformer blocks (alternately shifted windows)
    heads: int = 4
    window: int = 8  # tokens per window side
    style_dim: int = 64
    refine_blocks: int = 4

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation), _act())


class MaskedWindowBlock(nn.Module):
    """Window attention over valid tokens only, fused (not added) to its input; no LayerNorm."""

    def __init__(self, dim: int, heads: int, window: int, shift: bool) -> None:
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fuse = nn.Sequential(nn.Linear(2 * dim, dim), _act())
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, H, W, C) tokens; valid: (B, H, W) bool. Returns new tokens and validity."""
        b, h, w, c = x.shape
        s = self.window // 2 if self.shift else 0
        if s:
            x, valid = torch.roll(x, (-s, -s), (1, 2)), torch.roll(valid, (-s, -s), (1, 2))
        xw, vw = _windows(x, self.window), _windows(valid.unsqueeze(-1), self.window)[..., 0]
        n = xw.shape[1]
        q, k, v = self.qkv(xw).view(-1, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        logits = logits.masked_fill(~vw[:, None, None, :], torch.finfo(logits.dtype).min)
        any_valid = vw.any(dim=1)  # windows with no valid token attend to nothing
        attn = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(-1, n, c)
        attn = self.proj(attn) * any_valid[:, None, None].to(attn.dtype)
        out = self.fuse(torch.cat([xw, attn], dim=-1))
        out = out + self.mlp(out)
        grown = vw | any_valid[:, None]  # MAT's dynamic mask: a window with a valid token is valid
        out = _merge(out, self.window, b, h, w)
        grown = _merge(grown.unsqueeze(-1), self.window, b, h, w)[..., 0]
        if s:
            out, grown = torch.roll(out, (s, s), (1, 2)), torch.roll(grown, (s, s), (1, 2))
        return out, grown


def _windows(x: Tensor, win: int) -> Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // win, win, w // win, win, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, win * win, c)


def _merge(x: Tensor, win: int, b: int, h: int, w: int) -> Tensor:
    c = x.shape[-1]
    x = x.view(b, h // win, w // win, win, win, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class StyledConv(nn.Module):
    """3x3 conv, then per-channel scale/shift from the style vector and scaled seeded noise."""

    def __init__(self, cin: int, cout: int, style: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1)
        self.affine = nn.Linear(style, 2 * cout)
        self.noise_gain = nn.Parameter(torch.full((1, cout, 1, 1), 0.1))
        self.act = _act()

    def forward(self, x: Tensor, style: Tensor, noise: Tensor) -> Tensor:
        x = self.conv(x)
        gamma, beta = self.affine(style)[:, :, None, None].chunk(2, dim=1)
        x = x * (1 + gamma) + beta
        return self.act(x + self.noise_gain * _noise_at(noise, x.shape[-2:]))


def _noise_at(noise: Tensor, size: torch.Size) -> Tensor:
    """Full-resolution unit noise pooled to ``size``, rescaled back to unit variance."""
    factor = noise.shape[-1] // size[-1]
    return F.avg_pool2d(noise, factor) * factor if factor > 1 else noise


class Refiner(nn.Module):
    """Dilated residual convolutions at half resolution over the composited coarse fill."""

    def __init__(self, channels: int, blocks: int) -> None:
        super().__init__()
        self.inp = _conv(4, channels, 3, 2)
        self.blocks = nn.ModuleList(
            [_conv(channels, channels, 3, dilation=2 ** (i % 4)) for i in range(blocks)]
        )
        self.out = nn.Conv2d(channels, 3, 3, 1, 1)

    def forward(self, coarse: Tensor, valid: Tensor) -> Tensor:
        h = self.inp(torch.cat([coarse, valid], dim=1))
        for block in self.blocks:
            h = h + block(h)
        h = F.interpolate(h, size=coarse.shape[-2:], mode="bilinear", align_corners=False)
        return coarse + self.out(h)


class MaskAwareNet(nn.Module):
    """Image + validity + style noise -> fill and the Laplace scale of its error."""

    def __init__(self, config: MaskAwareConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or MaskAwareConfig()
        c, d = cfg.channels, cfg.dim
        self.embed = _conv(4, c, 5)
        self.down = nn.ModuleList(
            [
                nn.Sequential(_conv(c, 2 * c, 3, 2), _conv(2 * c, 2 * c)),
                nn.Sequential(_conv(2 * c, 4 * c, 3, 2), _conv(4 * c, 4 * c)),
                nn.Sequential(_conv(4 * c, d, 3, 2)),
            ]
        )
        self.position = nn.Conv2d(d, d, 3, 1, 1, groups=d)
        self.blocks = nn.ModuleList(
            [
                MaskedWindowBlock(d, cfg.heads, cfg.window, shift=i % 2 == 1)
                for i in range(cfg.depth)
            ]
        )
        self.style = nn.Sequential(nn.Linear(cfg.style_dim + d, cfg.style_dim), _act())
        widths = [(d, 4 * c), (4 * c, 2 * c), (2 * c, c)]
        self.merge = nn.ModuleList([_conv(a + b, b) for a, b in widths])
        self.styled = nn.ModuleList([StyledConv(b, b, cfg.style_dim) for _, b in widths])
        self.head = nn.Conv2d(c, 6, 3, 1, 1)
        self.refine = Refiner(c, cfg.refine_blocks)

    @property
    def multiple(self) -> int:
        """Input sides must be a multiple of this (8 px per token times the window)."""
        return 8 * self.config.window

    def forward(self, image: Tensor, valid: Tensor, z: Tensor, noise: Tensor) -> dict[str, Tensor]:
        """image (B,3,H,W) in [0,1]; valid (B,1,H,W) 1=known; z (B,style_dim); noise (B,1,H,W).

        Returns ``coarse`` and ``fill`` (B,3,H,W) in [0,1]-ish and ``log_scale`` (B,3,H,W).
        """
        x = torch.cat([(image * 2 - 1) * valid, valid], dim=1)
        skips = [self.embed(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        tokens, token_valid = self._transform(skips.pop(), valid)
        pooled = (tokens * token_valid).sum((2, 3)) / token_valid.sum((2, 3)).clamp(min=1)
        style = self.style(torch.cat([z, pooled], dim=1))
        h = tokens
        for merge, styled in zip(self.merge, self.styled, strict=True):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = styled(merge(torch.cat([h, skips.pop()], dim=1)), style, noise)
        out = self.head(h)
        coarse = (out[:, :3].tanh() + 1) / 2
        composed = coarse * (1 - valid) + image * valid
        fill = self.refine(composed * 2 - 1, valid)
        return {
            "coarse": coarse,
            "fill": (fill.clamp(-1, 1) + 1) / 2,
            "log_scale": out[:, 3:].clamp(-9, 2),
        }

    def _transform(self, feats: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        token_valid = F.max_pool2d(valid, 8) > 0
        x = (feats + self.position(feats)).permute(0, 2, 3, 1)
        v = token_valid[:, 0]
        for block in self.blocks:
            x, v = block(x, v)
        return x.permute(0, 3, 1, 2), v[:, None].to(x.dtype)


def sample(out: dict[str, Tensor], eps: Tensor, variation: float) -> Tensor:
    """The fill plus ``variation`` times seeded Laplace-scaled detail, in [0, 1]."""
    if variation == 0:
        return out["fill"]
    return (out["fill"] + variation * out["log_scale"].exp() * eps).clamp(0, 1)
