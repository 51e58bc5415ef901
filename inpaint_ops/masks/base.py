"""What every mask generator receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class MaskContext:
    """Everything a generator may look at besides the pixels.

    ``boxes`` are the source's annotated objects as float ``(N, 4)`` arrays of ``x1, y1, x2, y2``
    in pixel coordinates of the decoded image; ``labels`` has one entry per box.
    ``user_mask`` is a user-supplied mask already read and decoded by the pipeline
    (``from_files``), as a 2-D array of any dtype, or None when the source has none.
    """

    image_id: str = ""
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float64))
    labels: tuple[str, ...] = ()
    user_mask: np.ndarray | None = None


@dataclass(frozen=True)
class MaskResult:
    """A boolean ``(H, W)`` mask (True = fill) plus what it did, for the row's provenance.

    ``removed`` are indices into ``MaskContext.boxes`` of objects the mask erased; ``info`` holds
    small JSON-serialisable facts (e.g. the coverage a noise threshold reached).
    """

    mask: np.ndarray
    removed: tuple[int, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


class MaskSpec(BaseModel):
    """Base of every mask generator: a frozen, strict pydantic model with a ``kind`` tag.

    Subclasses declare ``kind: Literal["..."]`` and implement ``generate``; they must be pure:
    the same (image, context, rng state) always gives the same mask, and all randomness comes
    from ``rng``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    def generate(
        self, image: np.ndarray, context: MaskContext, rng: np.random.Generator
    ) -> MaskResult:
        raise NotImplementedError
