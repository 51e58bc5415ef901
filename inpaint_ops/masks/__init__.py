"""Mask generators: pure functions of (image, context, rng) giving a boolean fill mask.

``MaskKind`` is the discriminated union the manifest's ``masks`` list validates against;
``combine`` runs a list of them and unions the results.
"""

from .base import MaskContext, MaskResult, MaskSpec
from .boxes import Boxes
from .clouds import CloudRegions
from .damage import Damage, FreeForm
from .from_files import FromFiles
from .product_slots import ProductSlots
from .union import MASK_KINDS, MaskKind, combine

__all__ = [
    "MASK_KINDS",
    "Boxes",
    "CloudRegions",
    "Damage",
    "FreeForm",
    "FromFiles",
    "MaskContext",
    "MaskKind",
    "MaskResult",
    "MaskSpec",
    "ProductSlots",
    "combine",
]
