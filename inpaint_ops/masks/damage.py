"""Film and print damage (scratches, stains, torn edges, folds) and free-form holes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Literal

import cv2
import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .base import MaskContext, MaskResult, MaskSpec
from .params import CountRange, Fraction, draw_float, draw_int, ordered
from .strokes import STROKE_PRESETS, StrokePreset, draw_strokes, fill_to_ratio

# Above this, a "hole" is most of the image and strokes cannot reliably hit the ratio.
HoleRatio = Annotated[float, Field(ge=0.0, le=0.9)]
_EDGES = ("top", "bottom", "left", "right")
_CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


class FreeForm(BaseModel):
    """MAT-style large holes: strokes and rectangles added until a drawn hole ratio is reached."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hole_ratio: Annotated[tuple[HoleRatio, HoleRatio], AfterValidator(ordered)] = Field(
        (0.1, 0.4),
        description="Share of the image the damage mask covers once the holes are added "
        "(other damage included), [low, high]; a target is drawn per variant. At most 0.9.",
    )


class Damage(MaskSpec):
    """Damage to a photo, print or film, and free-form holes; enable any mix of parts.

    Enabled parts are drawn in field order onto one mask. Counts are ``[low, high]`` ranges
    drawn per variant; sizes are relative to the image's shorter side. A count range that
    includes 0 (or a probability below 1) can yield an empty mask, which the pipeline
    quarantines: use a range starting at 1 where every variant must be damaged.
    """

    kind: Literal["damage"] = "damage"
    scratches: CountRange | None = Field(
        None,
        description="Number of long, thin scratches (1-3 px up to 1024 px images, "
        "wider on larger ones), [low, high].",
    )
    blotches: CountRange | None = Field(
        None, description="Number of irregular stains or blotches, [low, high]."
    )
    torn_edge_p: Fraction = Field(
        0.0, description="Probability of a ragged torn strip along one random image edge."
    )
    folded_corner_p: Fraction = Field(
        0.0, description="Probability of a triangular folded (missing) corner."
    )
    strokes: StrokePreset | None = Field(
        None,
        description="LaMa-style random brush strokes: thick, medium or thin.",
    )
    free_form: FreeForm | None = Field(
        None, description="MAT-style large free-form holes, drawn last."
    )

    @model_validator(mode="after")
    def _something_enabled(self) -> Damage:
        counts = [r for r in (self.scratches, self.blotches) if r is not None and r[1] > 0]
        chances = [p for p in (self.torn_edge_p, self.folded_corner_p) if p > 0]
        shapes = [s for s in (self.strokes, self.free_form) if s is not None]
        if not (counts or chances or shapes):
            raise ValueError(
                "enable at least one of scratches, blotches, torn_edge_p, folded_corner_p, "
                "strokes, free_form"
            )
        return self

    def generate(
        self, image: np.ndarray, context: MaskContext, rng: np.random.Generator
    ) -> MaskResult:
        canvas = np.zeros(image.shape[:2], dtype=np.uint8)
        info: dict[str, object] = {}
        if self.scratches is not None:
            info["scratches"] = _repeat(_scratch, canvas, draw_int(rng, self.scratches), rng)
        if self.blotches is not None:
            info["blotches"] = _repeat(_blotch, canvas, draw_int(rng, self.blotches), rng)
        if self.torn_edge_p > 0:
            hit = rng.random() < self.torn_edge_p
            info["torn_edge"] = _torn_edge(canvas, rng) if hit else None
        if self.folded_corner_p > 0:
            hit = rng.random() < self.folded_corner_p
            info["folded_corner"] = _folded_corner(canvas, rng) if hit else None
        if self.strokes is not None:
            info["strokes"] = draw_strokes(canvas, STROKE_PRESETS[self.strokes], rng)
        if self.free_form is not None:
            target = draw_float(rng, self.free_form.hole_ratio)
            fill_to_ratio(canvas, target, self.free_form.hole_ratio[1], rng)
            info["hole_target"] = round(target, 6)
        info["hole_ratio"] = round(cv2.countNonZero(canvas) / canvas.size, 6)
        return MaskResult(mask=canvas.astype(bool), info=info)


def _repeat(
    draw: Callable[[np.ndarray, np.random.Generator], None],
    canvas: np.ndarray,
    count: int,
    rng: np.random.Generator,
) -> int:
    for _ in range(count):
        draw(canvas, rng)
    return count


def _scratch(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """A long, nearly straight, thin polyline that wanders slightly, like a film scratch."""
    height, width = canvas.shape
    side = min(height, width)
    # cv2 draws thickness 1 as 1 px and 2 as about 3 px wide: the 1-3 px of real scratches.
    thickness = draw_int(rng, (1, 2)) * max(1, side // 1024)
    vertices = draw_int(rng, (6, 12))
    step = draw_float(rng, (0.3, 1.0)) * math.hypot(height, width) / vertices
    heading = rng.uniform(0, math.pi)
    turns = heading + np.cumsum(rng.normal(0.0, 0.05, size=vertices))
    path = np.cumsum(step * np.stack([np.cos(turns), np.sin(turns)], axis=1), axis=0)
    path = np.vstack([np.zeros((1, 2)), path])
    # Centre the scratch on a random point so it crosses the image rather than leaving it.
    points = path - path.mean(axis=0) + rng.uniform((0, 0), (width, height))
    points = points.round().astype(np.int32)
    cv2.polylines(canvas, [points], isClosed=False, color=1, thickness=thickness)


def _blotch(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """An irregular stain: a rotated ellipse whose outline is perturbed by a few harmonics."""
    height, width = canvas.shape
    radius = draw_float(rng, (0.02, 0.08)) * min(height, width)
    aspect, rotation = rng.uniform(0.5, 1.0), rng.uniform(0, math.pi)
    theta = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    harmonics = np.arange(2, 7)[:, None]
    amplitude = rng.uniform(0.0, 0.3, size=(5, 1)) / harmonics
    phase = rng.uniform(0, 2 * math.pi, size=(5, 1))
    wobble = (amplitude * np.cos(harmonics * theta + phase)).sum(axis=0)
    r = radius * np.clip(1.0 + wobble, 0.3, None)
    x, y = r * np.cos(theta), aspect * r * np.sin(theta)
    cos, sin = math.cos(rotation), math.sin(rotation)
    centre = rng.uniform((0, 0), (width, height))
    outline = np.stack([cos * x - sin * y, sin * x + cos * y], axis=1) + centre
    cv2.fillPoly(canvas, [outline.round().astype(np.int32)], 1)


def _torn_edge(canvas: np.ndarray, rng: np.random.Generator) -> str:
    """A ragged strip along one edge: a wandering tear line with fibre-scale jitter."""
    height, width = canvas.shape
    side = min(height, width)
    edge = _EDGES[int(rng.integers(len(_EDGES)))]
    along = width if edge in ("top", "bottom") else height
    across = height if edge in ("top", "bottom") else width
    count = 48
    position = np.linspace(0, along - 1, count)
    drift = np.cumsum(rng.normal(0.0, 0.008 * side, size=count))
    jitter = rng.uniform(-0.004, 0.004, size=count) * side
    depth = np.clip(draw_float(rng, (0.02, 0.08)) * side + drift + jitter, 0, across / 2)
    along_axis = np.concatenate([[0], position, [along - 1]])
    depth_axis = np.concatenate([[0], depth, [0]])
    if edge in ("bottom", "right"):
        depth_axis = across - 1 - depth_axis
    xy = (along_axis, depth_axis) if edge in ("top", "bottom") else (depth_axis, along_axis)
    cv2.fillPoly(canvas, [np.stack(xy, axis=1).round().astype(np.int32)], 1)
    return edge


def _folded_corner(canvas: np.ndarray, rng: np.random.Generator) -> str:
    """A right triangle cut from one corner, legs 5-25% of the shorter side."""
    height, width = canvas.shape
    side = min(height, width)
    corner = _CORNERS[int(rng.integers(len(_CORNERS)))]
    leg_x, leg_y = (draw_float(rng, (0.05, 0.25)) * side for _ in range(2))
    x0 = 0.0 if corner.endswith("left") else width - 1.0
    y0 = 0.0 if corner.startswith("top") else height - 1.0
    sx = 1.0 if corner.endswith("left") else -1.0
    sy = 1.0 if corner.startswith("top") else -1.0
    triangle = np.array([(x0, y0), (x0 + sx * leg_x, y0), (x0, y0 + sy * leg_y)])
    cv2.fillPoly(canvas, [triangle.round().astype(np.int32)], 1)
    return corner
