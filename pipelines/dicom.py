"""DICOM sources: Part 10 files decoded to grayscale pixels by pydicom, with the X-ray rules explicit.

A file is DICOM when its bytes say so ("DICM" after the 128-byte preamble), whatever its name.
What ``decode_dicom`` does, in order:

- ``BurnedInAnnotation = YES`` is refused (``burned_in_annotation``) unless allowed: text in the
  pixels (names, dates) survives every re-encode, so such images must not reach a dataset.
- The declared size (Rows x Columns) is checked against ``max_pixels`` before any pixel is decoded.
- A compressed transfer syntax with no decoder installed is ``unsupported_format``, naming it.
- Multi-frame files give their first frame.
- MONOCHROME1/2: the modality transform (Rescale Slope/Intercept, or a Modality LUT) is applied,
  then ``window`` maps values to 0..2**bits-1; MONOCHROME1 is inverted so that brighter is
  higher everywhere downstream. 8-bit RGB (YBR converted by pydicom) stays RGB; anything else
  is ``unsupported_format``.

Privacy: pydicom's warnings and log lines quote element values (names, dates of birth), so they
are silenced while decoding, and an error's detail never carries a message pydicom wrote; only
structural facts (transfer syntax, photometric interpretation, bit depth) are named.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator, MutableSequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from pipelines.errors import ItemError, Reason

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_KNOWN_PHOTOMETRIC = frozenset(
    {*MONOCHROME, "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}
)
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


class DicomSpec(BaseModel):
    """How DICOM sources become pixels (files are recognised by their bytes, not their name)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: Literal["none", "auto"] | tuple[float, float] = Field(
        "none",
        description="How stored values map to output levels. `none`: the whole value range the header declares (BitsStored, after Rescale Slope/Intercept) maps linearly onto the output range, nothing clipped; the same value gives the same level in every file of a series, and unsigned 16-bit data with no rescale is kept exactly. `auto`: the file's own WindowCenter/WindowWidth (first pair) and VOILUTFunction; a file without them is quarantined (unsupported_format). `[center, width]`: this linear window, in modality units (after rescale, e.g. HU). Windows clip values outside them, by definition.",
    )
    bits: Literal[8, 16] = Field(
        16,
        description="Output depth of grayscale DICOM pixels: 16 (uint16, needs output.format png) or 8 (uint8).",
    )
    allow_burned_in_annotation: StrictBool = Field(
        False,
        description="Accept files whose BurnedInAnnotation is YES (text such as names is drawn into the pixels and survives re-encoding); by default they are quarantined (burned_in_annotation).",
    )

    @field_validator("window")
    @classmethod
    def _positive_width(cls, value: Any) -> Any:
        if isinstance(value, tuple) and value[1] < 1:
            raise ValueError(f"a window's width must be at least 1, got {value[1]}")
        return value


def is_dicom(data: bytes) -> bool:
    """True for a DICOM Part 10 file: "DICM" right after the 128-byte preamble."""
    return data[128:132] == b"DICM"


def decode_dicom(data: bytes, *, max_pixels: int, spec: DicomSpec) -> np.ndarray:
    """Decode a DICOM file into ``(H, W, C)`` uint8/uint16 pixels (rules in the module notes).

    Raises ``ItemError`` only: ``burned_in_annotation``, ``too_many_pixels``, ``not_an_image``,
    ``unsupported_format`` or ``decode_error``.
    """
    with _quiet():
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data))
        if _burned_in(ds) and not spec.allow_burned_in_annotation:
            raise ItemError(
                Reason.BURNED_IN_ANNOTATION,
                "DICOM BurnedInAnnotation is YES (text may be drawn into the pixels); "
                "set source.dicom.allow_burned_in_annotation to accept such files",
            )
        _check_size(ds, max_pixels)
        stored = _first_frame(ds)
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        if photometric in MONOCHROME and stored.ndim == 2:
            pixels = _grayscale(ds, stored, spec, inverted=photometric == "MONOCHROME1")
            return pixels[..., np.newaxis]
        if stored.ndim == 3 and stored.shape[2] == 3 and stored.dtype == np.uint8:
            return np.ascontiguousarray(stored)  # RGB; pydicom converted any YBR to RGB
        shown = photometric if photometric in _KNOWN_PHOTOMETRIC else "an unknown interpretation"
        raise ItemError(
            Reason.UNSUPPORTED_FORMAT,
            f"DICOM {shown} with {stored.dtype} samples has no defined mapping",
        )


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence pydicom (its messages quote element values) and withhold its error messages."""
    from pydicom import config

    logger = logging.getLogger("pydicom")
    was_disabled, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings(), config.disable_value_validation():
            warnings.simplefilter("ignore")
            yield
    except ItemError:
        raise
    except Exception as exc:
        # from None: the cause's message may quote patient data wherever a traceback is shown
        raise ItemError(
            Reason.DECODE_ERROR,
            f"DICOM could not be decoded ({type(exc).__name__}; pydicom's message is withheld "
            "as it may quote patient data)",
        ) from None
    finally:
        logger.disabled = was_disabled


def _burned_in(ds: Any) -> bool:
    return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"


def _check_size(ds: Any, max_pixels: int) -> None:
    if "PixelData" not in ds:
        raise ItemError(Reason.NOT_AN_IMAGE, "DICOM file without pixel data (e.g. a report)")
    width, height = int(ds.Columns), int(ds.Rows)
    if width * height > max_pixels:
        detail = f"{width}x{height} = {width * height} pixels > limit {max_pixels}"
        raise ItemError(Reason.TOO_MANY_PIXELS, detail)


def _first_frame(ds: Any) -> np.ndarray:
    """The stored values of the first frame, if this pydicom can decode the transfer syntax."""
    from pydicom.pixels import get_decoder, pixel_array

    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise ItemError(Reason.DECODE_ERROR, "DICOM file meta has no TransferSyntaxUID")
    shown = f"{syntax.name} ({syntax})" if syntax.is_transfer_syntax else "a private syntax"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ItemError(
            Reason.UNSUPPORTED_FORMAT, f"DICOM transfer syntax {shown} cannot be decoded"
        ) from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies)
        raise ItemError(
            Reason.UNSUPPORTED_FORMAT,
            f"DICOM transfer syntax {shown} needs a decoder that is not installed ({needs})",
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return pixel_array(ds, index=0 if frames > 1 else None)


def _grayscale(ds: Any, stored: np.ndarray, spec: DicomSpec, inverted: bool) -> np.ndarray:
    """Modality transform, window, inversion; then round to the output depth."""
    values, low, high = _modality(ds, stored)
    if spec.window == "none":
        # the header's range, not this image's min/max: one value, one level across a series
        scaled = (values - low) / (high - low)
    else:
        center, width, function = _window(ds, spec.window)
        scaled = _voi(values, center, width, function)
    # Only values outside the header's declared range (malformed files) are clipped here.
    scaled = np.clip(scaled, 0.0, 1.0)
    if inverted:  # MONOCHROME1: low values are white
        scaled = 1.0 - scaled
    top = 2**spec.bits - 1
    return np.rint(scaled * top).astype(np.uint16 if spec.bits == 16 else np.uint8)


def _modality(ds: Any, stored: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Modality values and the range the header declares for them (low < high)."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        lut_bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return apply_modality_lut(stored, ds).astype(np.float64), 0.0, float(2**lut_bits - 1)
    bits = int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    if slope == 0:
        raise ItemError(Reason.DECODE_ERROR, "DICOM RescaleSlope is 0")
    ends = sorted((slope * low + intercept, slope * high + intercept))
    return stored.astype(np.float64) * slope + intercept, ends[0], ends[1]


def _window(ds: Any, window: Literal["auto"] | tuple[float, float]) -> tuple[float, float, str]:
    """(center, width, VOI LUT function): the manifest's, or the file's own for ``auto``."""
    if window != "auto":
        return window[0], window[1], "LINEAR"
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        raise ItemError(
            Reason.UNSUPPORTED_FORMAT,
            "source.dicom.window is auto but the file has no WindowCenter/WindowWidth; "
            "use none or [center, width]",
        )
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in _VOI_FUNCTIONS:
        known = ", ".join(_VOI_FUNCTIONS)
        raise ItemError(Reason.UNSUPPORTED_FORMAT, f"DICOM VOILUTFunction is not one of {known}")
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    if width <= 0 or (function == "LINEAR" and width < 1):
        raise ItemError(Reason.DECODE_ERROR, "DICOM WindowWidth is out of range")
    return center, width, function


def _first(value: Any) -> float:
    return float(value[0]) if isinstance(value, MutableSequence) else float(value)


def _voi(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """The VOI LUT functions of DICOM PS3.3 C.11.2.1.2, onto 0..1 (unclipped)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return (values - center) / width + 0.5
    # LINEAR: the standard's half-sample offsets; width 1 is a step at center - 0.5
    return (values - (center - 0.5)) / max(width - 1.0, 1e-12) + 0.5
