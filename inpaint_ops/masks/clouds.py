"""Cloud-like regions from fractal value noise, thresholded to a target coverage."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import cv2
import numpy as np
from pydantic import Field

from .base import MaskContext, MaskResult, MaskSpec
from .params import FractionRange, draw_float

# Octaves finer than this many pixels per lattice cell add aliasing, not detail.
_FINEST_CELL_PX = 2.0


class CloudRegions(MaskSpec):
    """Cover a drawn share of the image with irregular, cloud-like blobs.

    A fractal (fBm) value-noise field is summed from ``octaves`` random lattices, the coarsest
    with cells of ``scale_px`` pixels, each next one twice as fine and ``persistence`` times as
    strong. The field is blurred by ``soft_edge_px`` and thresholded at the quantile that gives
    the drawn coverage, so the achieved coverage (``info["coverage"]``) matches the target to
    within a fraction of a percent.
    """

    kind: Literal["cloud_regions"] = "cloud_regions"
    coverage: FractionRange = Field(
        (0.2, 0.5), description="Share of the image to cover, [low, high]; drawn per variant."
    )
    scale_px: Annotated[float, Field(gt=0)] = Field(
        128.0, description="Blob scale in pixels: cell size of the coarsest noise octave."
    )
    octaves: Annotated[int, Field(ge=1, le=12)] = Field(
        5, description="Number of noise octaves; more gives more ragged edges."
    )
    persistence: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5, description="Amplitude ratio between successive octaves (lower = smoother)."
    )
    soft_edge_px: Annotated[float, Field(ge=0)] = Field(
        2.0,
        description="Gaussian blur (sigma, pixels) of the noise field before thresholding: "
        "smooths the mask's edges. The mask itself stays boolean.",
    )

    def generate(
        self, image: np.ndarray, context: MaskContext, rng: np.random.Generator
    ) -> MaskResult:
        height, width = image.shape[:2]
        target = draw_float(rng, self.coverage)
        field = fractal_noise(height, width, self.scale_px, self.octaves, self.persistence, rng)
        if self.soft_edge_px > 0:
            field = cv2.GaussianBlur(field, (0, 0), self.soft_edge_px)
        mask = _threshold_to_coverage(field, target)
        info = {"target": round(target, 6), "coverage": round(float(mask.mean()), 6)}
        return MaskResult(mask=mask, info=info)


def fractal_noise(
    height: int,
    width: int,
    scale_px: float,
    octaves: int,
    persistence: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """A float32 ``(height, width)`` fBm field: a sum of smoothly interpolated random lattices."""
    field = np.zeros((height, width), dtype=np.float32)
    cell, amplitude = float(scale_px), 1.0
    for octave in range(octaves):
        if octave > 0 and cell < _FINEST_CELL_PX:
            break
        _add_value_noise(field, cell, amplitude, rng)
        cell, amplitude = cell / 2.0, amplitude * persistence
    return field


def _add_value_noise(
    field: np.ndarray, cell: float, amplitude: float, rng: np.random.Generator
) -> None:
    """Add one octave to ``field``: random values on a lattice of ``cell``-pixel squares.

    Interpolation is separable (along x on the small lattice, then along y at full size) and
    done in place, so an octave costs a few passes over the image whatever its cell size. A
    random sub-cell offset keeps the lattice lines of successive octaves from lining up.
    """
    height, width = field.shape
    offset_y, offset_x = rng.uniform(0.0, 1.0, size=2)
    lattice = rng.random((math.ceil(height / cell) + 2, math.ceil(width / cell) + 2))
    lattice = (lattice * amplitude).astype(np.float32)
    iy, ty = _cell_coordinates(height, cell, offset_y)
    ix, tx = _cell_coordinates(width, cell, offset_x)
    rows = lattice[:, ix]
    rows += (lattice[:, ix + 1] - rows) * tx
    upper = rows.take(iy, axis=0)
    lower = rows.take(iy + 1, axis=0)
    lower -= upper
    lower *= ty[:, None]
    field += upper
    field += lower


def _cell_coordinates(size: int, cell: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index of every pixel and its quintic-faded position inside the cell."""
    position = np.arange(size, dtype=np.float32) / np.float32(cell) + np.float32(offset)
    index = position.astype(np.intp)
    t = position - index
    return index, t * t * t * (t * (t * 6 - 15) + 10)


def _threshold_to_coverage(field: np.ndarray, target: float) -> np.ndarray:
    """True where the field is among its highest ``target`` share of values."""
    count = round(target * field.size)
    if count <= 0:
        return np.zeros(field.shape, dtype=bool)
    if count >= field.size:
        return np.ones(field.shape, dtype=bool)
    flat = field.ravel()
    # The count-th largest value; partition is linear time, a full sort is not needed.
    cut = np.partition(flat, flat.size - count)[flat.size - count]
    return field >= cut
