"""``lama``: a LaMa TorchScript file (the format published for big-lama), pinned by sha256.

The call contract (as IOPaint calls ``big-lama.pt``): image float32 RGB (1, 3, H, W) in [0, 1],
mask int64 (1, 1, H, W) in {0, 1}, H and W multiples of 8; output RGB (1, 3, H, W) in about
[0, 1]. TorchScript archives can carry code, so a file is loaded only when its sha256 matches
the manifest's pin.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from inpaint_ops.inpainters.base import InpaintFn
from inpaint_ops.inpainters.neural import (
    NeuralInpainter,
    Precision,
    WindowedFill,
    autocast,
    torch_device,
    weights_path,
    windows_per_call,
)


class Lama(NeuralInpainter):
    """LaMa (resolution-robust large-mask inpainting with Fourier convolutions), TorchScript.

    Deterministic: every variant of an image gets the same fill. ``weights_sha256`` is required.
    """

    requires_pin: ClassVar[bool] = True

    kind: Literal["lama"] = Field("lama", description="LaMa from a TorchScript file.")
    precision: Precision = Field(
        "fp32",
        description="Arithmetic on CUDA. fp32 by default: LaMa's Fourier convolutions have no "
        "bf16 kernels, and fp16 ones only for power-of-two sizes.",
    )
    resolution: int = Field(
        512,
        ge=32,
        le=4096,
        multiple_of=8,
        description="Side of the square window filled around each group of holes.",
    )

    def load(self, device: str = "cpu", weights: Path | None = None) -> InpaintFn:
        """Check the pin, then load the TorchScript module once."""
        import torch

        from inpaint_ops.weights import load_torchscript

        dev = torch_device(device)
        module = load_torchscript(
            weights_path(self, weights), str(dev), expected_sha256=self.weights_sha256
        )

        def forward(pixels: np.ndarray, holes: np.ndarray, seeds: list[int]) -> np.ndarray:
            del seeds  # deterministic model
            image = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(dev)
            mask = torch.from_numpy(holes)[:, None].to(dev, torch.int64)
            outs = []
            # One window per call: published LaMa archives are traced at batch size 1.
            with torch.inference_mode(), autocast(dev, self.precision):
                for i in range(image.shape[0]):
                    outs.append(module(image[i : i + 1], mask[i : i + 1]).float())
            filled = torch.cat(outs).clamp(0, 1)
            return filled.permute(0, 2, 3, 1).cpu().numpy()

        return WindowedFill(
            forward,
            self.resolution,
            self.context,
            windows_per_call(dev, self.batch_size),
            dev.type,
            8,
        )
