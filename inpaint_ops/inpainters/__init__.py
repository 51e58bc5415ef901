"""Inpainters: each a pydantic spec whose ``load(device)`` returns ``fn(image, mask, rng)``.

``InpainterKind`` is the registry: a discriminated union on ``kind``. A new inpainter is added
by writing its spec and listing it here; manifests, the JSON Schema and the contract tests pick
it up from the union.
"""

from __future__ import annotations

from typing import Annotated, Union, get_args

from pydantic import Field

from inpaint_ops.inpainters.base import InpainterSpec, InpaintFn
from inpaint_ops.inpainters.classical import NavierStokes, Telea
from inpaint_ops.inpainters.diffusion import Diffusion
from inpaint_ops.inpainters.lama import Lama
from inpaint_ops.inpainters.maskaware import MaskAware

# Union[...] rather than `|`: the members are listed one a line as the union grows.
InpainterKind = Annotated[
    Union[  # noqa: UP007
        Telea,
        NavierStokes,
        MaskAware,
        Lama,
        Diffusion,
    ],
    Field(discriminator="kind"),
]

INPAINTER_KINDS: tuple[type[InpainterSpec], ...] = get_args(get_args(InpainterKind)[0])

__all__ = [
    "INPAINTER_KINDS",
    "Diffusion",
    "InpaintFn",
    "InpainterKind",
    "InpainterSpec",
    "Lama",
    "MaskAware",
    "NavierStokes",
    "Telea",
]
