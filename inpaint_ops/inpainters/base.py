"""The interface every inpainter implements, classical or neural."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# fn(image, mask, rng) -> filled image of the same shape and dtype as ``image``.
# ``image`` is (H, W, C) with C in {1, 3}, uint8 or uint16; ``mask`` is bool (H, W), True = fill.
InpaintFn = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
FillJob = tuple[np.ndarray, np.ndarray, np.random.Generator]

_LABEL = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class InpainterSpec(BaseModel):
    """Base of every inpainter: a frozen, strict pydantic model with a ``kind`` tag.

    ``load(device, weights)`` is called once per actor and returns the fill function, which is
    then called for many images. A fill function may also offer ``many(jobs)`` to fill a batch
    in one go (neural models do); ``fill_many`` uses it when present. Heavy imports (torch,
    model weights) happen inside ``load``, never at import. The pipeline pastes the original
    unmasked pixels back after every call (see ``composite``), so a function may touch pixels
    outside the mask, but must not depend on anything but its arguments.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = Field(
        None,
        pattern=_LABEL,
        description="Label on rows and output keys; defaults to `kind`. Needed to tell apart "
        "two inpainters of the same kind listed side by side.",
    )

    @property
    def label(self) -> str:
        """What rows call this inpainter: ``name`` if given, else ``kind``."""
        return self.name or self.kind  # type: ignore[attr-defined]

    def load(self, device: str = "cpu", weights: Path | None = None) -> InpaintFn:
        """The fill function; ``weights`` is the local copy of ``weights_uri()`` if any."""
        raise NotImplementedError

    def weights_uri(self) -> str | None:
        """Where this inpainter's weights live, or None for methods without weights."""
        return None

    def check_files(self, weights: Path) -> None:
        """Cheap checks of fetched weights before any compute (raise WeightsError); no loading."""
        del weights

    def for_masks(self, mask_kinds: tuple[str, ...]) -> InpainterSpec:
        """This spec as used with masks of these kinds (a prompt chosen per kind, say).

        The pipeline calls it once before ``load``; most inpainters ignore the masks.
        """
        del mask_kinds
        return self


def fill_many(fill: InpaintFn, jobs: Sequence[FillJob]) -> list[np.ndarray]:
    """Fill a batch of (image, mask, rng) jobs, in one call where the function batches."""
    many = getattr(fill, "many", None)
    if many is not None:
        return many(jobs)
    return [fill(image, mask, rng) for image, mask, rng in jobs]
