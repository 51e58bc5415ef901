"""Classical inpainters over OpenCV's ``cv2.inpaint``: Telea (fast marching) and Navier-Stokes.

Both are deterministic and run on the CPU. Large images with small holes are filled window by
window (see ``large_image``). Isolated one-pixel holes never reach OpenCV: they are set to the
mean of their eight neighbours, which is what a correct fill of such a hole converges to. That
sidesteps OpenCV issue 28648: since 4.10 Telea reads the wrong neighbours for holes at the
image border, reported as saturated fills of one-pixel holes; OpenCV 5.0.0 still reads row 1
for row 0 there, which biases such fills by about one pixel's worth of gradient.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field

from inpaint_ops.composite import validate_image_and_mask
from inpaint_ops.inpainters.base import InpainterSpec, InpaintFn
from inpaint_ops.inpainters.large_image import (
    fill_at_half_resolution,
    fill_in_windows,
    hole_windows,
    window_fraction,
)

# Windows are worth it only while they cover a small part of the image: past half of it the
# fixed per-image cost saved no longer pays for the extra calls.
_MAX_WINDOW_FRACTION = 0.5
# The fewest pixels of context kept around a hole in a window, whatever the radius.
_MIN_WINDOW_MARGIN_PX = 16
_NEIGHBOUR_ROWS = np.array([-1, -1, -1, 0, 0, 1, 1, 1])
_NEIGHBOUR_COLS = np.array([-1, 0, 1, -1, 1, -1, 0, 1])


class _OpenCVInpainter(InpainterSpec):
    """Fields and fill logic shared by the ``cv2.inpaint`` methods."""

    _flag: ClassVar[int]

    radius: int = Field(
        5,
        ge=1,
        le=64,
        description="Radius in pixels of the neighbourhood around each hole pixel that the "
        "method reads. Larger is smoother and slower.",
    )
    large_image: Literal["window", "downscale", "full"] = Field(
        "window",
        description="How to fill images of at least `large_image_min_pixels` pixels. "
        "'window': fill each group of holes inside a window around it (same pixels as 'full' "
        "when the holes are small, several times faster; falls back to 'full' when the windows "
        "would cover more than half the image). 'downscale': fill at half resolution and paste "
        "the upsampled fill into the holes only (faster for large holes, softer fill). "
        "'full': always fill the whole image at once.",
    )
    large_image_min_pixels: int = Field(
        3_000_000,
        ge=1,
        description="Images with at least this many pixels (height x width) use the "
        "`large_image` strategy; smaller ones are always filled whole.",
    )

    def load(self, device: str = "cpu", weights: Path | None = None) -> InpaintFn:
        """The fill function ``fn(image, mask, rng) -> image``.

        The method runs on the CPU whatever ``device`` names. It is deterministic: ``rng`` is
        accepted for the common interface and not used, so every variant of an image gets the
        same fill. Images are (H, W, C), C in {1, 3}, uint8 or uint16; 16-bit stays 16-bit.
        """
        del device, weights  # CPU only, no weights

        def fill(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            del rng  # deterministic method: nothing to draw
            return self._fill(image, mask)

        return fill

    @property
    def window_margin_px(self) -> int:
        """Context kept around each hole in a window: well beyond what the method reads."""
        return max(3 * self.radius, _MIN_WINDOW_MARGIN_PX)

    def _fill(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        validate_image_and_mask(image, mask)
        if not mask.any():
            return image.copy()
        if image.shape[0] * image.shape[1] >= self.large_image_min_pixels:
            if self.large_image == "downscale":
                return fill_at_half_resolution(image, mask, self._fill_region)
            if self.large_image == "window":
                windows = hole_windows(mask, self.window_margin_px)
                if window_fraction(windows, image.shape) <= _MAX_WINDOW_FRACTION:
                    return fill_in_windows(image, mask, windows, self._fill_region)
        return self._fill_region(image, mask)

    def _fill_region(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Fill a whole image or one window: isolated pixels here, the rest with OpenCV."""
        isolated = isolated_pixels(mask)
        if not isolated.any():
            return _opencv_inpaint(image, mask, self.radius, self._flag)
        out = image.copy()
        fill_with_neighbour_mean(out, isolated)
        rest = mask & ~isolated
        if not rest.any():
            return out
        # The isolated pixels are now known context for OpenCV, not planted values.
        return _opencv_inpaint(out, rest, self.radius, self._flag)


class Telea(_OpenCVInpainter):
    """OpenCV's Telea inpainting (fast marching): fills each hole from its border inward.

    Deterministic; runs on the CPU. Isolated one-pixel holes are filled with the mean of their
    neighbours (OpenCV issue 28648).
    """

    _flag: ClassVar[int] = cv2.INPAINT_TELEA

    kind: Literal["telea"] = Field(
        "telea", description="Selects OpenCV's Telea (fast marching) inpainting."
    )


class NavierStokes(_OpenCVInpainter):
    """OpenCV's Navier-Stokes inpainting: continues image lines (isophotes) into the holes.

    Deterministic; runs on the CPU. Isolated one-pixel holes are filled with the mean of their
    neighbours, as for Telea.
    """

    _flag: ClassVar[int] = cv2.INPAINT_NS

    kind: Literal["navier_stokes"] = Field(
        "navier_stokes", description="Selects OpenCV's Navier-Stokes inpainting."
    )


def isolated_pixels(mask: np.ndarray) -> np.ndarray:
    """Bool (H, W): the masked pixels none of whose eight neighbours is masked."""
    counts = cv2.boxFilter(
        mask.view(np.uint8), -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT
    )
    return mask & (counts == 1)


def fill_with_neighbour_mean(image: np.ndarray, isolated: np.ndarray) -> None:
    """Set each ``isolated`` pixel of ``image`` (in place) to the rounded mean of its neighbours.

    The neighbours must all be known pixels, as they are for ``isolated_pixels``; those outside
    the image are left out of the mean.
    """
    height, width = isolated.shape
    rows, cols = np.nonzero(isolated)
    near_rows = rows[:, None] + _NEIGHBOUR_ROWS
    near_cols = cols[:, None] + _NEIGHBOUR_COLS
    inside = (near_rows >= 0) & (near_rows < height) & (near_cols >= 0) & (near_cols < width)
    values = image[near_rows.clip(0, height - 1), near_cols.clip(0, width - 1)]
    total = (values * inside[:, :, None]).sum(axis=1, dtype=np.float64)
    # A 1x1 image has no neighbours at all; leave its pixel as it is rather than divide by 0.
    count = inside.sum(axis=1)[:, None]
    mean = np.where(count > 0, total / np.maximum(count, 1), image[rows, cols])
    image[rows, cols] = np.rint(mean).astype(image.dtype)


def _opencv_inpaint(image: np.ndarray, mask: np.ndarray, radius: int, flag: int) -> np.ndarray:
    """cv2.inpaint for (H, W, C) uint8/uint16 images; returns a new array of the same shape.

    Both methods treat channels independently, so RGB needs no swap to BGR here. OpenCV takes
    16-bit images with one channel only; 16-bit colour is filled channel by channel, which gives
    what a 3-channel 16-bit fill would (verified equal for 8-bit), at three times the fixed cost.
    """
    hole = mask.view(np.uint8)  # a bool array is 0/1 bytes already: no copy
    if image.dtype == np.uint16 and image.shape[2] == 3:
        planes = [
            cv2.inpaint(np.ascontiguousarray(image[:, :, c]), hole, radius, flag) for c in range(3)
        ]
        return np.stack(planes, axis=2)
    return cv2.inpaint(image, hole, radius, flag).reshape(image.shape)
