"""Free-form holes for inpainting training: brush strokes and stroke-plus-rectangle holes.

Two published recipes inspire these shapes. LaMa trains on random-walk brush strokes in thick,
medium and thin flavours; MAT trains on large holes built from strokes and rectangles until a
target hole ratio is reached. Both are re-implemented here from their descriptions. All sizes are
fractions of the image's shorter side, so a 256 px tile and a 2048 px X-ray get the same look.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from .params import draw_float, draw_int

StrokePreset = Literal["thick", "medium", "thin"]


@dataclass(frozen=True)
class StrokeStyle:
    """How one family of random-walk brush strokes looks (sizes relative to the shorter side)."""

    strokes: tuple[int, int]  # strokes per mask
    vertices: tuple[int, int]  # segments per stroke
    width: tuple[float, float]  # brush diameter
    length: tuple[float, float]  # length of one segment
    max_turn: float  # largest change of heading between segments, radians


STROKE_PRESETS: dict[StrokePreset, StrokeStyle] = {
    "thick": StrokeStyle((1, 4), (1, 5), (0.08, 0.18), (0.10, 0.35), math.pi / 2),
    "medium": StrokeStyle((2, 6), (2, 6), (0.03, 0.07), (0.08, 0.25), math.pi / 2),
    "thin": StrokeStyle((4, 10), (3, 8), (0.008, 0.025), (0.05, 0.20), math.pi),
}

# Strokes used to build free-form holes: wide brushes with many vertices.
_HOLE_STROKE = StrokeStyle((1, 1), (4, 18), (0.03, 0.10), (0.05, 0.20), math.pi)
_MAX_HOLE_SHAPES = 400  # bounds the loop even for targets it cannot reach exactly
_SHRINK = 0.7  # shape-size factor applied after a shape would overshoot the hole ratio


def draw_strokes(canvas: np.ndarray, style: StrokeStyle, rng: np.random.Generator) -> int:
    """Draw ``style.strokes`` random-walk strokes onto a uint8 canvas; returns how many."""
    count = draw_int(rng, style.strokes)
    for _ in range(count):
        draw_stroke(canvas, style, rng)
    return count


def draw_stroke(
    canvas: np.ndarray, style: StrokeStyle, rng: np.random.Generator, size: float = 1.0
) -> None:
    """One brush stroke: a random walk of straight segments with round joins.

    ``size`` scales width and segment length; free-form holes shrink it to fine-tune the ratio.
    """
    height, width = canvas.shape
    side = min(height, width) * size
    x, y = rng.uniform(0, width), rng.uniform(0, height)
    brush = max(1, round(draw_float(rng, style.width) * side))
    heading = rng.uniform(0, 2 * math.pi)
    start = (round(x), round(y))
    cv2.circle(canvas, start, brush // 2, 1, thickness=-1)
    for _ in range(draw_int(rng, style.vertices)):
        heading += rng.uniform(-style.max_turn, style.max_turn)
        step = draw_float(rng, style.length) * side
        # Clamping to the frame makes strokes slide along edges instead of leaving the image.
        x = min(max(x + step * math.cos(heading), 0.0), width - 1.0)
        y = min(max(y + step * math.sin(heading), 0.0), height - 1.0)
        end = (round(x), round(y))
        cv2.line(canvas, start, end, 1, thickness=brush)
        cv2.circle(canvas, end, brush // 2, 1, thickness=-1)
        start = end


def draw_rectangle(canvas: np.ndarray, rng: np.random.Generator, size: float = 1.0) -> None:
    """A filled axis-aligned rectangle with sides up to half the shorter image side."""
    height, width = canvas.shape
    longest = max(1.0, 0.5 * min(height, width) * size)
    box_w = round(rng.uniform(0.1, 1.0) * longest)
    box_h = round(rng.uniform(0.1, 1.0) * longest)
    x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
    cv2.rectangle(canvas, (x, y), (x + box_w, y + box_h), 1, thickness=-1)


def fill_to_ratio(
    canvas: np.ndarray, target: float, ceiling: float, rng: np.random.Generator
) -> float:
    """Add strokes and rectangles to ``canvas`` until at least ``target`` of it is set.

    A shape that would push the ratio above ``ceiling`` is undone and later shapes are drawn
    smaller, so the result lands in ``[target, ceiling]`` instead of overshooting (unless the
    shape budget runs out first, which only a near-zero gap between the two can cause).
    Returns the ratio reached.
    """
    area = canvas.size
    filled = cv2.countNonZero(canvas)
    size = 1.0
    for _ in range(_MAX_HOLE_SHAPES):
        if filled >= target * area:
            break
        trial = canvas.copy()
        if rng.random() < 0.5:
            draw_stroke(trial, _HOLE_STROKE, rng, size)
        else:
            draw_rectangle(trial, rng, size)
        trial_filled = cv2.countNonZero(trial)
        if trial_filled > ceiling * area:
            size *= _SHRINK
            continue
        canvas[...] = trial
        filled = trial_filled
    return filled / area
