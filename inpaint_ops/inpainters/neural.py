"""What every neural inpainter shares: weights fields, devices, precision, and batched windows.

A neural spec turns its weights into a ``BatchForward`` — float windows in, float windows out —
and ``WindowedFill`` does the rest: plans context windows around the holes of many images
(``crops``), converts them to float RGB at the model's resolution, runs the model over uniform
batches, and pastes the fills back into each image's hole pixels in the image's own dtype.
Nothing here imports torch at module level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from inpaint_ops.composite import validate_image_and_mask
from inpaint_ops.inpainters import crops
from inpaint_ops.inpainters.base import FillJob, InpainterSpec

# (windows float32 (B, R, R, 3) in [0, 1], holes bool (B, R, R), one seed per window)
#   -> filled windows float32 (B, R, R, 3)
BatchForward = Callable[[np.ndarray, np.ndarray, list[int]], np.ndarray]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

_SHA256 = r"^[0-9a-fA-F]{64}$"


class NeuralInpainter(InpainterSpec):
    """Fields shared by the neural inpainters; ``weights`` is fetched by the pipeline."""

    # True where loading the weights can run code (TorchScript): a pin is then mandatory.
    requires_pin: ClassVar[bool] = False

    weights: str = Field(
        description="Path or URL (file://, s3://, gs://, ...) of the weights. Relative paths "
        "resolve against the manifest's folder."
    )
    weights_sha256: str | None = Field(
        None,
        pattern=_SHA256,
        description="sha256 the weights must have; the run stops before any compute when they "
        "differ. `pipeline plan` prints the hash of the weights it finds.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for reading `weights` (credentials)."
    )
    resolution: int = Field(
        256,
        ge=32,
        le=4096,
        multiple_of=8,
        description="Side in pixels of the square window the model fills; each group of holes "
        "is filled in a window around it resized to this size.",
    )
    context: float = Field(
        0.5,
        ge=0,
        le=8,
        description="Context kept around a group of holes, as a fraction of its larger side on "
        "each side (0.5: the window is twice the hole's size).",
    )
    batch_size: int = Field(
        8,
        ge=1,
        le=1024,
        description="Windows per model call on a GPU. CPUs fill one window at a time: batched "
        "float maths differs in the last bits from unbatched, and a fill must not depend on "
        "which items shared a batch (one at a time also measured faster on CPUs).",
    )
    precision: Precision = Field(
        "auto",
        description="Arithmetic on CUDA: 'auto' is bf16 where the GPU supports it, else fp16. "
        "CPUs always compute in fp32.",
    )

    def weights_uri(self) -> str | None:
        return self.weights


def windows_per_call(device: Any, batch_size: int) -> int:
    """``batch_size`` on a GPU; 1 on the CPU, so CPU fills are reproducible bit for bit."""
    return batch_size if device.type == "cuda" else 1


def torch_device(device: str) -> Any:
    """The torch device to use: ``cuda`` falls back to the CPU when no GPU is visible."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(device)


def autocast(device: Any, precision: Precision) -> AbstractContextManager[Any]:
    """Mixed precision on CUDA as asked; a no-op on the CPU or with fp32."""
    import torch

    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def generator(seed: int) -> Any:
    """A CPU torch.Generator: CPU draws are the same on every machine, GPU draws are not."""
    import torch

    return torch.Generator("cpu").manual_seed(seed)


@dataclass(frozen=True)
class _Window:
    job: int
    crop: crops.Crop
    seed: int


class WindowedFill:
    """A loaded neural inpainter: call it on one image, or ``many`` on a batch of them."""

    def __init__(
        self,
        forward: BatchForward,
        resolution: int,
        context: float,
        batch_size: int,
        device: str = "cpu",
        native_multiple: int | None = None,
    ) -> None:
        self.forward = forward
        self.device = device  # where the model runs, recorded on every row
        self.resolution = resolution
        self.context = context
        self.batch_size = batch_size
        self.native_multiple = native_multiple

    def model_size(self, side: int) -> int:
        """The side a window of ``side`` px is filled at.

        ``resolution`` for models with one input size (diffusion). Fully convolutional models
        (``native_multiple`` set) fill a window at its own size rounded to that multiple, capped
        at ``resolution``: a small image is not blown up to a scale the model never saw.
        """
        if self.native_multiple is None:
            return self.resolution
        step = self.native_multiple
        return min(self.resolution, max(step, round(side / step) * step))

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.many([(image, mask, rng)])[0]

    def many(self, jobs: Sequence[FillJob]) -> list[np.ndarray]:
        """Fill every job; windows from all jobs share model calls, ``batch_size`` at a time."""
        windows: list[_Window] = []
        for j, (image, mask, rng) in enumerate(jobs):
            validate_image_and_mask(image, mask)
            for crop in crops.plan_crops(mask, self.resolution, self.context):
                # One seed per window, drawn in window order: reproducible whatever the batching.
                windows.append(_Window(j, crop, int(rng.integers(0, 2**63 - 1))))
        outs = [image.copy() for image, _, _ in jobs]
        # Batches hold windows of one model size (most are `resolution` on large images).
        windows.sort(key=lambda w: self.model_size(w.crop.side))
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start : start + self.batch_size]
            for size in sorted({self.model_size(w.crop.side) for w in chunk}):
                same = [w for w in chunk if self.model_size(w.crop.side) == size]
                self._run(same, jobs, outs, size)
        return outs

    def _run(
        self, batch: list[_Window], jobs: Sequence[FillJob], outs: list[np.ndarray], size: int
    ) -> None:
        pixels = np.stack(
            [
                # Resized before the float conversion: a big window costs its own dtype, not 4x.
                to_float_rgb(crops.to_resolution(crops.take(jobs[w.job][0], w.crop), size))
                for w in batch
            ]
        )
        holes = np.stack(
            [
                crops.hole_at_resolution(
                    crops.take(jobs[w.job][1].view(np.uint8), w.crop) > 0, size
                )
                for w in batch
            ]
        )
        filled = self.forward(pixels, holes, [w.seed for w in batch])
        if filled.shape != pixels.shape:
            raise ValueError(f"model returned shape {filled.shape}, expected {pixels.shape}")
        if not np.isfinite(filled).all():
            raise FloatingPointError("the model returned NaN or infinite values")
        for w, window in zip(batch, filled, strict=True):
            image, mask, _ = jobs[w.job]
            back = crops.from_resolution(np.ascontiguousarray(window), w.crop.side)
            crops.paste(
                outs[w.job], mask, w.crop, from_float_rgb(back, image.dtype, image.shape[2])
            )


def to_float_rgb(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8/uint16, C in {1, 3} -> float32 (H, W, 3) in [0, 1] (grey is repeated)."""
    scale = np.float32(np.iinfo(pixels.dtype).max)
    out = pixels.astype(np.float32) / scale
    if out.ndim == 2 or out.shape[2] == 1:
        out = np.repeat(out.reshape(out.shape[0], out.shape[1], 1), 3, axis=2)
    return out


def from_float_rgb(pixels: np.ndarray, dtype: np.dtype, channels: int) -> np.ndarray:
    """float (H, W, 3) -> (H, W, channels) of ``dtype``, rounded and clipped (grey: the mean)."""
    if channels == 1:
        pixels = pixels.mean(axis=2, keepdims=True)
    top = np.iinfo(dtype).max
    return np.clip(np.rint(pixels * top), 0, top).astype(dtype)


def weights_path(spec: NeuralInpainter, weights: Path | None) -> Path:
    """The local weights file the pipeline fetched, or ``spec.weights`` read as a local path."""
    path = weights if weights is not None else Path(spec.weights.removeprefix("file://"))
    if not path.exists():
        raise FileNotFoundError(f"{spec.kind} weights not found: {path}")
    return path
