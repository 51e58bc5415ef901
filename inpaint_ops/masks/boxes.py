"""Random axis-aligned rectangles: the simplest hole shape, useful as a baseline."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from .base import MaskContext, MaskResult, MaskSpec
from .params import FractionRange, PositiveCountRange, draw_float, draw_int


class Boxes(MaskSpec):
    """Mask ``count`` random rectangles lying wholly inside the image.

    Each rectangle's width and height are drawn independently from ``size`` times the image's
    shorter side (at least one pixel), so the same spec suits small tiles and large scans.
    Rectangles may overlap. ``info["boxes"]`` lists them as ``[x1, y1, x2, y2]``, half-open.
    """

    kind: Literal["boxes"] = "boxes"
    count: PositiveCountRange = Field(
        (1, 3), description="Number of rectangles per variant, [low, high] inclusive."
    )
    size: FractionRange = Field(
        (0.05, 0.3),
        description="Width and height of each rectangle as a share of the image's shorter "
        "side, [low, high]; drawn independently per side.",
    )

    def generate(
        self, image: np.ndarray, context: MaskContext, rng: np.random.Generator
    ) -> MaskResult:
        height, width = image.shape[:2]
        side = min(height, width)
        mask = np.zeros((height, width), dtype=bool)
        placed: list[list[int]] = []
        for _ in range(draw_int(rng, self.count)):
            box_w = min(max(1, round(draw_float(rng, self.size) * side)), width)
            box_h = min(max(1, round(draw_float(rng, self.size) * side)), height)
            x1 = int(rng.integers(0, width - box_w + 1))
            y1 = int(rng.integers(0, height - box_h + 1))
            mask[y1 : y1 + box_h, x1 : x1 + box_w] = True
            placed.append([x1, y1, x1 + box_w, y1 + box_h])
        return MaskResult(mask=mask, info={"boxes": placed})
