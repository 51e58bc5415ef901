"""Masks supplied by the user as image files, one per source image."""

from __future__ import annotations

import posixpath
from typing import Literal

import numpy as np
from pydantic import Field

from .base import MaskContext, MaskResult, MaskSpec
from .params import Fraction


class FromFiles(MaskSpec):
    """Use the user's own mask for each image, matched by ``image_id``.

    The mask for image ``shelves/a.jpg`` is ``<uri>/shelves/a.png`` with the default ``suffix``
    (see ``mask_key``). The pipeline reads and decodes it and passes it as
    ``MaskContext.user_mask``; this class only interprets the pixels:

    * colour masks count a pixel as white when any colour channel is (alpha is ignored);
    * a two-level mask (every pixel 0 or one other value, e.g. 0/255 or 0/1 label PNGs) is
      white wherever it is non-zero; any other mask is white above ``threshold`` times the
      format's full scale (255 for 8-bit, 65535 for wider integers, 1.0 for floats);
    * ``polarity`` says which of white and black is the area to fill (see its description).

    A missing mask or one whose size differs from the image raises ``ValueError``, which the
    pipeline records as a quarantined item rather than guessing.
    """

    kind: Literal["from_files"] = "from_files"
    uri: str = Field(
        min_length=1,
        description="Folder holding the masks: a storage URL (s3://..., gs://...) or a path "
        "relative to the manifest. Its layout mirrors the source's.",
    )
    suffix: str = Field(
        ".png",
        min_length=1,
        pattern=r"^[^/\\]+$",
        description="Mask file name = the image_id with its extension replaced by this: "
        "'a/b.jpg' -> 'a/b.png' with '.png', 'a/b_mask.png' with '_mask.png'.",
    )
    polarity: Literal["auto", "white_fill", "black_fill"] = Field(
        "auto",
        description="white_fill: white marks the area to fill (the usual convention). "
        "black_fill: black marks it. auto: white_fill, unless white covers more than half of "
        "the image, in which case the mask is taken to be inverted (holes are the minority). "
        "Set it explicitly for masks whose holes may cover over half the image.",
    )
    threshold: Fraction = Field(
        0.5,
        description="For masks that are not two-level: a pixel is white above this share of "
        "full scale.",
    )

    def mask_key(self, image_id: str) -> str:
        """The mask's path relative to ``uri`` for one image (its extension swapped)."""
        stem, _extension = posixpath.splitext(image_id)
        return stem + self.suffix

    def generate(
        self, image: np.ndarray, context: MaskContext, rng: np.random.Generator
    ) -> MaskResult:
        if context.user_mask is None:
            raise ValueError(f"no mask file for {context.image_id}")
        gray = _single_channel(np.asarray(context.user_mask))
        height, width = image.shape[:2]
        if gray.shape != (height, width):
            mask_h, mask_w = gray.shape
            raise ValueError(
                f"mask for {context.image_id} is {mask_w}x{mask_h} (width x height) "
                f"but the image is {width}x{height}"
            )
        white = _white(gray, self.threshold)
        inverted = self.polarity == "black_fill" or (
            self.polarity == "auto" and int(np.count_nonzero(white)) * 2 > white.size
        )
        mask = ~white if inverted else white
        info = {"polarity": "black_fill" if inverted else "white_fill", "inverted": inverted}
        return MaskResult(mask=mask, info=info)


def _single_channel(mask: np.ndarray) -> np.ndarray:
    """2-D: single-channel masks squeezed, colour ones reduced to their brightest channel."""
    if mask.ndim == 2:
        return mask
    if mask.ndim == 3 and mask.shape[2] == 1:
        return mask[:, :, 0]
    if mask.ndim == 3 and mask.shape[2] in (3, 4):
        return mask[:, :, :3].max(axis=2)
    raise ValueError(f"mask has shape {mask.shape}; expected (H, W) or (H, W, 1|3|4)")


def _white(gray: np.ndarray, threshold: float) -> np.ndarray:
    """A new boolean array, True where the mask is white (see ``FromFiles``)."""
    if gray.dtype == bool:
        return gray.copy()
    top = gray.max()
    if top <= 0:
        return np.zeros(gray.shape, dtype=bool)
    nonzero = gray != 0
    if not np.any(nonzero & (gray != top)):
        return nonzero
    if np.issubdtype(gray.dtype, np.integer):
        full_scale = 255 if gray.dtype.itemsize == 1 else 65535
    else:
        full_scale = 1.0
    return gray > threshold * full_scale
