"""Erase annotated products from shelf photos, so the inpainter fills the empty slots."""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from .base import MaskContext, MaskResult, MaskSpec
from .params import FractionRange, NonNegativeInt, PositiveCountRange, draw_float, draw_int


class ProductSlots(MaskSpec):
    """Mask ``k`` of the image's annotated boxes (``MaskContext.boxes``) per variant.

    ``k`` comes from ``count`` or from ``fraction`` of the boxes (give exactly one); it is at
    least 1 and at most the number of usable boxes. An image without usable boxes gets an empty
    mask, which the pipeline quarantines, rather than an exception.
    """

    kind: Literal["product_slots"] = "product_slots"
    count: PositiveCountRange | None = Field(
        None, description="Number of boxes to erase per variant, [low, high] inclusive."
    )
    fraction: FractionRange | None = Field(
        None,
        description="Share of the image's boxes to erase per variant, [low, high]; "
        "rounded to the nearest whole box, at least one. Use instead of count.",
    )
    margin_px: NonNegativeInt = Field(
        2, description="Grow every erased box by this many pixels on each side."
    )
    dilate_px: NonNegativeInt = Field(
        0,
        description="Dilate the union of erased boxes with an elliptical kernel of this radius "
        "(hides shadows and label edges the boxes miss).",
    )
    adjacent: bool = Field(
        False,
        description="Erase neighbouring facings on one shelf row (a contiguous run sorted by x) "
        "instead of boxes anywhere in the image.",
    )

    @model_validator(mode="after")
    def _one_of_count_fraction(self) -> ProductSlots:
        if (self.count is None) == (self.fraction is None):
            raise ValueError("give exactly one of count or fraction")
        return self

    def generate(
        self, image: np.ndarray, context: MaskContext, rng: np.random.Generator
    ) -> MaskResult:
        height, width = image.shape[:2]
        boxes = np.asarray(context.boxes, dtype=np.float64).reshape(-1, 4)
        usable = _usable_boxes(boxes, height, width)
        mask = np.zeros((height, width), dtype=bool)
        if usable.size == 0:
            return MaskResult(mask=mask, removed=(), info={"k": 0})
        k = self._draw_k(rng, usable.size)
        if self.adjacent:
            chosen = _adjacent_run(boxes, usable, k, rng)
        else:
            chosen = np.sort(rng.choice(usable, size=k, replace=False))
        for index in chosen:
            x1, y1, x2, y2 = _pixel_rect(boxes[index], self.margin_px, height, width)
            mask[y1:y2, x1:x2] = True
        if self.dilate_px > 0:
            mask = _dilate(mask, self.dilate_px)
        removed = tuple(sorted(int(i) for i in chosen))
        return MaskResult(mask=mask, removed=removed, info={"k": len(removed)})

    def _draw_k(self, rng: np.random.Generator, available: int) -> int:
        if self.count is not None:
            wanted = draw_int(rng, self.count)
        else:
            assert self.fraction is not None  # guaranteed by the validator
            wanted = math.floor(draw_float(rng, self.fraction) * available + 0.5)
        return min(max(wanted, 1), available)


def _usable_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Indices of boxes that are finite, non-degenerate and overlap the image."""
    finite = np.isfinite(boxes).all(axis=1)
    x1, y1, x2, y2 = (np.nan_to_num(boxes[:, i]) for i in range(4))
    inside = (x2 > np.maximum(x1, 0)) & (y2 > np.maximum(y1, 0)) & (x1 < width) & (y1 < height)
    return np.flatnonzero(finite & inside)


def _pixel_rect(box: np.ndarray, margin: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Every pixel the grown box touches, clipped to the image (half-open bounds)."""
    x1 = min(max(math.floor(box[0] - margin), 0), width)
    y1 = min(max(math.floor(box[1] - margin), 0), height)
    x2 = min(max(math.ceil(box[2] + margin), 0), width)
    y2 = min(max(math.ceil(box[3] + margin), 0), height)
    return x1, y1, x2, y2


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.view(np.uint8), kernel).astype(bool)


def shelf_rows(boxes: np.ndarray, indices: np.ndarray) -> list[list[int]]:
    """Group boxes into shelf rows, top to bottom.

    Boxes are visited by the height of their centre; a box joins the current row when its
    vertical span contains the row's mean centre line and the row's mean span contains the box's
    centre line. Requiring both keeps a tall box from swallowing the rows above and below it.
    """
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    rows: list[list[int]] = []
    for index in sorted(indices.tolist(), key=lambda i: (centre_y[i], i)):
        if rows:
            row = rows[-1]
            row_centre = float(centre_y[row].mean())
            row_top, row_bottom = boxes[row, 1].mean(), boxes[row, 3].mean()
            box_top, box_bottom = boxes[index, 1], boxes[index, 3]
            if box_top <= row_centre <= box_bottom and row_top <= centre_y[index] <= row_bottom:
                row.append(index)
                continue
        rows.append([index])
    return rows


def _adjacent_run(
    boxes: np.ndarray, usable: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """``k`` neighbouring boxes of one randomly chosen row; fewer if no row is that long."""
    rows = shelf_rows(boxes, usable)
    k = min(k, max(len(row) for row in rows))
    candidates = [row for row in rows if len(row) >= k]
    row = candidates[int(rng.integers(len(candidates)))]
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    ordered = sorted(row, key=lambda i: (centre_x[i], i))
    start = int(rng.integers(len(ordered) - k + 1))
    return np.array(ordered[start : start + k], dtype=np.int64)
