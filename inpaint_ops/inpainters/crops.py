"""Crop-around-mask: fill each group of holes inside a square context window at model resolution.

A neural model works at one resolution (256 or 512 px). A 4000x3000 shelf photo with three
emptied slots is neither resized whole (the fill would be a blur) nor fed whole (memory, and
batches of unequal shapes): each group of holes gets a square window holding the hole and
``context`` times its size of surroundings on each side, resized to the model's resolution. The
model fills the window; the fill is resized back and pasted into that group's hole pixels only.
Windows of nearby groups may overlap but never paste the same pixel, so all windows of all
images in a batch are independent and go through the model together in uniform batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from inpaint_ops.inpainters.large_image import hole_windows


@dataclass(frozen=True)
class Crop:
    """A square window of side ``side`` at (``top``, ``left``) filling the holes of one group.

    The group's holes lie inside ``hole`` (rows, columns), and only they are pasted back from
    this window: windows of neighbouring groups may overlap, each filling its own holes. The
    window may reach past the image (a small image in a large model): the missing part is filled
    by reflecting the image.
    """

    top: int
    left: int
    side: int
    hole: tuple[slice, slice]


# More windows than this per image and nearby groups are merged (dense speckle, a dot grid):
# each window is one model call's worth of work.
MAX_WINDOWS = 32


def plan_crops(mask: np.ndarray, resolution: int, context: float = 0.5) -> list[Crop]:
    """Square windows that together fill every hole pixel of ``mask`` (bool H x W).

    Holes are grouped (holes closer than about a tenth of the model's resolution share a
    group, coarser if that leaves more than MAX_WINDOWS groups). A group's window is at least
    ``resolution`` px (or the image's longer side, if smaller), so small holes are filled at the
    model's native scale, and at least ``1 + 2 * context`` times the group's larger side.
    """
    if resolution < 8 or context < 0:
        raise ValueError(f"resolution must be >= 8 and context >= 0, got {resolution}, {context}")
    height, width = mask.shape
    margin = max(resolution // 16, 1)
    groups = hole_windows(mask, margin)
    while len(groups) > MAX_WINDOWS:
        margin *= 2
        groups = hole_windows(mask, margin)
    # hole_windows grows each group by the margin; the group's holes lie inside either way.
    return [_square(rows, cols, resolution, context, height, width) for rows, cols in groups]


def _square(
    rows: slice, cols: slice, resolution: int, context: float, height: int, width: int
) -> Crop:
    hole_side = max(rows.stop - rows.start, cols.stop - cols.start)
    side = max(math.ceil(hole_side * (1 + 2 * context)), min(resolution, max(height, width)))
    side = min(side, max(height, width))  # never more context than the image has
    top = _place(rows.start, rows.stop, side, height)
    left = _place(cols.start, cols.stop, side, width)
    return Crop(top, left, side, (rows, cols))


def _place(start: int, stop: int, side: int, extent: int) -> int:
    """Window start centred on [start, stop), kept inside [0, extent) when it fits."""
    if side >= extent:
        return -((side - extent) // 2)  # centre the image in a window larger than it
    centred = (start + stop) // 2 - side // 2
    return min(max(centred, 0), extent - side)


def take(image: np.ndarray, crop: Crop) -> np.ndarray:
    """The window's pixels (side x side x C), reflecting the image where the window leaves it."""
    height, width = image.shape[:2]
    top, left, side = crop.top, crop.left, crop.side
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, height), min(left + side, width)
    inside = image[y0:y1, x0:x1]
    pads = (y0 - top, top + side - y1, x0 - left, left + side - x1)
    if not any(pads):
        return inside
    padded = cv2.copyMakeBorder(inside, *pads, cv2.BORDER_REFLECT_101)
    return padded.reshape(side, side, *image.shape[2:])


def to_resolution(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """Resize a float window to resolution x resolution (area-averaged when shrinking)."""
    side = pixels.shape[0]
    if side == resolution:
        return pixels
    method = cv2.INTER_AREA if side > resolution else cv2.INTER_CUBIC
    out = cv2.resize(pixels, (resolution, resolution), interpolation=method)
    return out.reshape(resolution, resolution, *pixels.shape[2:])


def hole_at_resolution(hole: np.ndarray, resolution: int) -> np.ndarray:
    """The window's hole at model resolution: a pixel is a hole if any part of it was one.

    Conservative on purpose: a partly-hole pixel left as context would feed the model the very
    pixels it is asked to replace.
    """
    if hole.shape[0] == resolution:
        return hole
    cover = cv2.resize(
        hole.astype(np.float32), (resolution, resolution), interpolation=cv2.INTER_AREA
    )
    return cover > 0


def from_resolution(pixels: np.ndarray, side: int) -> np.ndarray:
    """Resize a filled float window from model resolution back to ``side`` x ``side``."""
    if pixels.shape[0] == side:
        return pixels
    method = cv2.INTER_AREA if pixels.shape[0] > side else cv2.INTER_LINEAR
    out = cv2.resize(pixels, (side, side), interpolation=method)
    return out.reshape(side, side, *pixels.shape[2:])


def paste(out: np.ndarray, mask: np.ndarray, crop: Crop, filled: np.ndarray) -> None:
    """Write the window's own hole pixels (those of its group) from a filled window."""
    rows, cols = crop.hole
    region = filled[
        rows.start - crop.top : rows.stop - crop.top, cols.start - crop.left : cols.stop - crop.left
    ]
    np.copyto(out[rows, cols], region, where=mask[rows, cols, None])
