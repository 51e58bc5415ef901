"""The mask registry: the discriminated union the manifest validates, and how kinds combine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import Field

from .base import MaskContext, MaskResult, MaskSpec
from .boxes import Boxes
from .clouds import CloudRegions
from .damage import Damage
from .from_files import FromFiles
from .product_slots import ProductSlots

# The union is the registry: a new generator is added here and in MASK_KINDS, nowhere else.
MaskKind = Annotated[
    ProductSlots | CloudRegions | Damage | Boxes | FromFiles,
    Field(discriminator="kind"),
]
MASK_KINDS: tuple[type[MaskSpec], ...] = (ProductSlots, CloudRegions, Damage, Boxes, FromFiles)


def combine(
    specs: Sequence[MaskSpec],
    image: np.ndarray,
    context: MaskContext,
    rng: np.random.Generator,
) -> MaskResult:
    """Run several generators on one image and return the union of their masks.

    Each generator gets its own child generator, seeded from ``rng`` in list order
    (``PCG64(rng.integers(2**63))``), so how many numbers one generator draws never shifts
    another's: changing a generator's parameters leaves the others' masks unchanged. The result
    has the OR of the masks, the sorted union of ``removed`` indices and
    ``info["generators"]``: one ``{"kind": ..., **info}`` entry per spec, in order.
    """
    if not specs:
        raise ValueError("combine needs at least one mask spec")
    height, width = image.shape[:2]
    seeds = [int(rng.integers(2**63)) for _ in specs]
    union = np.zeros((height, width), dtype=bool)
    removed: set[int] = set()
    parts: list[dict[str, object]] = []
    for spec, seed in zip(specs, seeds, strict=True):
        result = spec.generate(image, context, np.random.Generator(np.random.PCG64(seed)))
        kind = getattr(spec, "kind", type(spec).__name__)
        if result.mask.shape != (height, width) or result.mask.dtype != bool:
            raise ValueError(
                f"mask generator {kind} returned {result.mask.dtype} {result.mask.shape}; "
                f"expected bool {(height, width)}"
            )
        union |= result.mask
        removed.update(result.removed)
        parts.append({"kind": kind, **result.info})
    return MaskResult(mask=union, removed=tuple(sorted(removed)), info={"generators": parts})
