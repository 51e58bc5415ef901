"""The interface every inpainter implements, classical or neural."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict

# fn(image, mask, rng) -> filled image of the same shape and dtype as ``image``.
# ``image`` is (H, W, C) with C in {1, 3}, uint8 or uint16; ``mask`` is bool (H, W), True = fill.
InpaintFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]


class InpainterSpec(BaseModel):
    """Base of every inpainter: a frozen, strict pydantic model with a ``kind`` tag.

    ``load(device)`` is called once per actor and returns the fill function, which is then called
    for many images. Heavy imports (torch, model weights) happen inside ``load``, never at import.
    The pipeline pastes the original unmasked pixels back after every call (see ``composite``),
    so a function may touch pixels outside the mask, but must not depend on anything but its
    arguments.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    def load(self, device: str = "cpu") -> InpaintFn:
        raise NotImplementedError

    def weights_sha256(self) -> str | None:
        """sha256 of the weights this inpainter uses, or None for classical methods."""
        return None
