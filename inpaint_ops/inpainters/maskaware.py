"""``maskaware``: synthfill's own trainable inpainting model (see ``maskaware_net``).

Checkpoints are safetensors files written by ``pipeline train``; their metadata carries the
network's config and the resolution it was trained at, so a manifest needs only the path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from inpaint_ops.inpainters.base import InpaintFn
from inpaint_ops.inpainters.neural import (
    NeuralInpainter,
    WindowedFill,
    autocast,
    generator,
    torch_device,
    weights_path,
    windows_per_call,
)

# Metadata keys of a maskaware checkpoint (safetensors header, all values strings).
FORMAT_KEY, CONFIG_KEY, RESOLUTION_KEY, CARD_KEY = "format", "config", "resolution", "card"
FORMAT = "synthfill.maskaware.v1"


class MaskAware(NeuralInpainter):
    """A mask-aware transformer trained on your own images with `pipeline train`.

    Seeded: each variant draws its own style vector and noise, and ``variation`` adds seeded
    detail of the size the model expects its error to be. Runs on the CPU or a GPU.
    """

    kind: Literal["maskaware"] = Field(
        "maskaware", description="synthfill's trainable mask-aware transformer."
    )
    resolution: int | None = Field(  # type: ignore[assignment]
        None,
        ge=64,
        le=4096,
        multiple_of=64,
        description="Largest side at which the model fills a window (a multiple of 64): larger "
        "windows are shrunk to it, smaller ones are filled at about their own size, never blown "
        "up. Default: twice the checkpoint's training crop, the scale its training crops saw on "
        "average (they are cut from images resized to 1-3 crop sides).",
    )

    variation: float = Field(
        0.5,
        ge=0,
        le=2,
        description="Seeded detail added to the fill, in units of the model's expected error "
        "per pixel: 0 gives the model's single best guess (same for every seed), 1 detail as "
        "strong as that error.",
    )

    def check_files(self, weights: Path) -> None:
        """A maskaware safetensors checkpoint (its header is read, no tensors)."""
        checkpoint_metadata(weights)

    def load(self, device: str = "cpu", weights: Path | None = None) -> InpaintFn:
        """Build the network from the checkpoint's config and load its weights, once."""
        import torch

        net, trained_at = load_checkpoint(weights_path(self, weights))
        resolution = self.resolution or 2 * trained_at
        if resolution % net.multiple:
            raise ValueError(f"maskaware resolution must be a multiple of {net.multiple}")
        dev = torch_device(device)
        net = net.to(dev).eval()
        style_dim = net.config.style_dim

        def forward(pixels: np.ndarray, holes: np.ndarray, seeds: list[int]) -> np.ndarray:
            draws = [_draws(seed, style_dim, pixels.shape[1]) for seed in seeds]
            z, noise, eps = (torch.stack(parts).to(dev) for parts in zip(*draws, strict=True))
            image = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(dev)
            valid = torch.from_numpy(~holes)[:, None].to(dev, torch.float32)
            with torch.inference_mode(), autocast(dev, self.precision):
                out = net(image, valid, z, noise)
            filled = _sample(out, eps, self.variation)
            return filled.float().permute(0, 2, 3, 1).cpu().numpy()

        return WindowedFill(
            forward,
            resolution,
            self.context,
            windows_per_call(dev, self.batch_size),
            dev.type,
            net.multiple,
        )


def _draws(seed: int, style_dim: int, side: int) -> tuple[Any, Any, Any]:
    """Style vector, decoder noise and detail noise of one window, from one CPU generator."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    gen = generator(seed)
    z = torch.randn(style_dim, generator=gen)
    noise = torch.randn(1, side, side, generator=gen)
    # Detail varies smoothly (blotches of shade and colour, not per-pixel grain): drawn at 1/4
    # resolution and upsampled.
    coarse = torch.randn(1, 3, side // 4, side // 4, generator=gen)
    eps = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)[0]
    return z, noise, eps


def _sample(out: dict[str, Any], eps: Any, variation: float) -> Any:
    from inpaint_ops.inpainters.maskaware_net import sample

    return sample({k: v.float() for k, v in out.items()}, eps.float(), variation)


def checkpoint_metadata(path: Path) -> dict[str, str]:
    """The metadata of a maskaware checkpoint; WeightsError if the file is not one."""
    from inpaint_ops.weights import WeightsError, read_safetensors_metadata

    if path.suffix != ".safetensors":
        raise WeightsError(
            f"{path}: a maskaware checkpoint is a .safetensors file (pipeline train)"
        )
    meta = read_safetensors_metadata(path)
    if meta.get(FORMAT_KEY) != FORMAT:
        raise WeightsError(
            f"{path} is not a maskaware checkpoint (format {meta.get(FORMAT_KEY)!r}, "
            f"expected {FORMAT!r}); make one with `pipeline train`"
        )
    try:
        json.loads(meta[CONFIG_KEY])
        int(meta[RESOLUTION_KEY])
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"{path}: damaged maskaware metadata ({exc!r})") from None
    return meta


def load_checkpoint(path: Path) -> tuple[Any, int]:
    """(network with weights loaded, training resolution) from a maskaware safetensors file."""
    from inpaint_ops.inpainters.maskaware_net import MaskAwareConfig, MaskAwareNet
    from inpaint_ops.weights import WeightsError, load_state_dict

    meta = checkpoint_metadata(path)
    try:
        net = MaskAwareNet(MaskAwareConfig(**json.loads(meta[CONFIG_KEY])))
        net.load_state_dict(load_state_dict(path))
    except (TypeError, RuntimeError) as exc:  # unknown config keys, or tensors that do not fit
        raise WeightsError(f"{path}: does not match this maskaware network ({exc})") from None
    return net, int(meta[RESOLUTION_KEY])
