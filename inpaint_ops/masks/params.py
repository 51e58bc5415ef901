"""Parameter types shared by the mask specs, and how a value is drawn from them.

Ranges are written in YAML as two-element lists, ``[low, high]``, both ends inclusive; a fixed
value is ``[v, v]``. Validation rejects ``low > high`` so a swapped range fails before compute
instead of silently sampling nothing.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import AfterValidator, Field


def ordered(value: tuple[float, float]) -> tuple[float, float]:
    """Validate a ``(low, high)`` pair: low must not exceed high."""
    low, high = value
    if low > high:
        raise ValueError(f"range [{low}, {high}] has low > high; write it as [low, high]")
    return value


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveInt = Annotated[int, Field(ge=1)]

# Two-element [low, high] ranges; each end is validated like the scalar type.
FractionRange = Annotated[tuple[Fraction, Fraction], AfterValidator(ordered)]
CountRange = Annotated[tuple[NonNegativeInt, NonNegativeInt], AfterValidator(ordered)]
PositiveCountRange = Annotated[tuple[PositiveInt, PositiveInt], AfterValidator(ordered)]


def draw_int(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    """An integer drawn uniformly from the inclusive range ``bounds``."""
    return int(rng.integers(bounds[0], bounds[1] + 1))


def draw_float(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A float drawn uniformly from ``[low, high]`` (exactly ``low`` when both ends are equal)."""
    return float(rng.uniform(bounds[0], bounds[1]))
