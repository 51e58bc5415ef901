"""The image codec: the one guard every source image passes through, and the encoders.

Decoding returns numpy ``(H, W, C)``, C-contiguous and writeable, with C in {1, 3} and dtype uint8
or uint16. Every failure is an ``ItemError`` with a reason; nothing is swallowed or patched over.

How pixels are normalised (the same rules for every container and every call):

- EXIF orientation (or XMP ``tiff:Orientation``) is applied, then all metadata is left behind.
- Grayscale stays grayscale ``(H, W, 1)``; 1-bit becomes 0/255 uint8.
- 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``) stays uint16, unclipped. 32-bit integer
  pixels (``I``) become uint16 when every value is in 0..65535, else ``unsupported_format``;
  float pixels (``F``) are ``unsupported_format``: neither has one right scaling, so we refuse
  rather than guess.
- Transparency (palette, LA, RGBA, a tRNS colour) is composited over white with exact integer
  maths; gray+alpha stays gray.
- CMYK, YCbCr, LAB, HSV and RGBX become RGB via Pillow. Pillow has no 16-bit colour mode: 48-bit
  RGB becomes 8-bit (the high byte of each sample).
- Multi-frame files (animated WebP, multi-page TIFF) give their first frame.
- No colour management: ICC profiles are ignored, as most training pipelines do.

DICOM (recognised by "DICM" at byte 128, not by name) is decoded by ``pipelines.dicom``: its
modality transform, window and MONOCHROME1 inversion are set by a ``DicomSpec``; its metadata is
never returned.

Size limit: ``max_pixels`` is checked against the declared header size before any pixel is
decoded, with no global state. Pillow's own process-wide bomb check (``Image.MAX_IMAGE_PIXELS``)
is bypassed for JPEG, PNG and BMP; its TIFF, WebP and multi-picture JPEG decoders still consult it
(they warn above it and fail above twice it). For a ``max_pixels`` above twice Pillow's default
call ``raise_pillow_pixel_limit`` once at worker start.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Literal

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps

from pipelines.dicom import DicomSpec, decode_dicom, is_dicom
from pipelines.errors import ItemError, Reason

DICOM = "DICOM"  # not a Pillow format: decoded by pipelines.dicom
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF", "BMP", DICOM})
DEFAULT_MAX_PIXELS = 100_000_000

_UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = {"LA": "LA", "La": "LA", "PA": "RGBA", "P": "RGBA", "RGBA": "RGBA", "RGBa": "RGBA"}
_COLOUR_MODES = frozenset({"RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_MASK_MODES = frozenset({"1", "L", "I", "F"}) | _UINT16_MODES
_ROTATED = range(2, 9)  # EXIF orientations that exif_transpose acts on
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_ENCODERS = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}

Opener = tuple[str, Callable[..., ImageFile.ImageFile], Callable[[bytes], Any] | None]


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str = "",
    formats: frozenset[str] | None = None,
    dicom: DicomSpec | None = None,
) -> np.ndarray:
    """Decode one source image into ``(H, W, C)`` uint8/uint16 pixels (see the module notes).

    ``formats`` are Pillow format names or ``DICOM`` (default ``ALLOWED_FORMATS``); the container
    is sniffed from the bytes, never from a file name. ``name`` only labels error details.
    ``dicom`` says how DICOM pixels are mapped (default ``DicomSpec()``).

    Raises ``ItemError`` with ``empty_object``, ``not_an_image``, ``unsupported_format``,
    ``decode_error``, ``too_many_pixels`` or (DICOM) ``burned_in_annotation``; ``ValueError``
    for an unknown format name.
    """
    allowed = frozenset(f.upper() for f in formats or ALLOWED_FORMATS)
    openers = _openers(allowed)
    with _decode_guard(data, name):
        if is_dicom(data):
            if DICOM not in allowed:
                raise ItemError(Reason.UNSUPPORTED_FORMAT, "DICOM is not an allowed format")
            return decode_dicom(data, max_pixels=max_pixels, spec=dicom or DicomSpec())
        im = _open_checked(data, openers, max_pixels)
        pixels = _decode_with_cv2(data, im)
        if pixels is None:
            pixels = _decode_with_pillow(im)
        return np.ascontiguousarray(pixels)


def decode_mask(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str = "",
    formats: frozenset[str] | None = None,
) -> np.ndarray:
    """Decode a user-supplied mask into a 2-D array, behind the same guard as ``decode_image``.

    1-bit gives bool, 8-bit gray uint8, 16-bit gray uint16, ``I``/``F`` int32/float32, as stored.
    Anything else (palette, RGB, with or without alpha) becomes 8-bit luminance: alpha is dropped,
    not composited, so a transparent background stays 0, and palette indices are not kept.
    EXIF orientation is applied so the mask lines up with its decoded image.
    """
    openers = _openers(frozenset(formats or ALLOWED_FORMATS))
    with _decode_guard(data, name):
        im = _open_checked(data, openers, max_pixels)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        if im.mode not in _MASK_MODES:
            im = im.convert("L")
        values = np.asarray(im)
        return values.astype(np.uint16) if im.mode in _UINT16_MODES else values.copy()


def encode_image(
    image: np.ndarray,
    fmt: Literal["jpeg", "png", "webp"],
    quality: int = 92,
    png_level: int = 1,
) -> bytes:
    """Encode RGB or gray pixels; the output carries no metadata and is byte-identical per input.

    Accepts ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` RGB; uint8, or uint16 for png only (16-bit
    PNG). ``quality`` (1..100) is for jpeg/webp, ``png_level`` (0..9) the zlib level for png.
    Raises ``ValueError`` for a bad array or parameter, ``ItemError(encode_error)`` when the
    encoder refuses the image (e.g. a side over WebP's 16383 pixels).
    """
    pixels = _encodable(image, fmt)
    if not 1 <= quality <= 100 or not 0 <= png_level <= 9:
        raise ValueError(f"quality must be 1..100 and png_level 0..9, got {quality}, {png_level}")
    params = {
        "jpeg": [cv2.IMWRITE_JPEG_QUALITY, quality],
        "webp": [cv2.IMWRITE_WEBP_QUALITY, quality],
        "png": [cv2.IMWRITE_PNG_COMPRESSION, png_level],
    }[fmt]
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    try:
        ok, buffer = cv2.imencode(_ENCODERS[fmt], pixels, params)
    except cv2.error as exc:
        raise ItemError(Reason.ENCODE_ERROR, f"{fmt}: {exc}") from exc
    if not ok:
        raise ItemError(Reason.ENCODE_ERROR, f"{fmt}: the encoder refused {pixels.shape}")
    return buffer.tobytes()


def encode_mask(mask: np.ndarray) -> bytes:
    """Encode a bool ``(H, W)`` mask as a 1-bit PNG, white = fill (about 0.7 ms for 1024x768)."""
    if mask.dtype != np.bool_ or mask.ndim != 2:
        raise ValueError(f"a mask must be bool (H, W), got {mask.dtype} {mask.shape}")
    buffer = io.BytesIO()
    # Pillow writes no ancillary chunks unless asked, so the bytes depend on the pixels only.
    Image.fromarray(mask).save(buffer, "PNG")
    return buffer.getvalue()


def raise_pillow_pixel_limit(max_pixels: int) -> None:
    """Let Pillow's process-wide bomb check admit images up to ``max_pixels``; never lowers it.

    Call once at worker start when ``max_pixels`` exceeds twice Pillow's default and TIFF or WebP
    sources are expected; ``decode_image`` still enforces ``max_pixels`` itself.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


@contextmanager
def _decode_guard(data: bytes, name: str) -> Iterator[None]:
    """Turn every failure inside into an ItemError whose detail keeps the original message."""
    label = f"{name}: " if name else ""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A process-wide switch someone turned on would make cut files decode as grey: refuse.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; it must stay False")
    if not data:
        raise ItemError(Reason.EMPTY_OBJECT, f"{label}0 bytes")
    try:
        yield
    except ItemError as exc:
        raise ItemError(exc.reason, label + exc.detail) from exc
    except Image.DecompressionBombError as exc:
        hint = " (Pillow's own limit; see raise_pillow_pixel_limit)"
        raise ItemError(Reason.TOO_MANY_PIXELS, label + _describe(exc) + hint) from exc
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, TypeError, ...
        raise ItemError(Reason.DECODE_ERROR, label + _describe(exc)) from exc


def _describe(exc: BaseException) -> str:
    """Type and message, minus object addresses: details go into the index, identical per run."""
    return _ADDRESS.sub("", f"{type(exc).__name__}: {exc}")


@lru_cache(maxsize=16)
def _openers(formats: frozenset[str]) -> tuple[Opener, ...]:
    """Pillow's (factory, signature check) for each allowed format, in a fixed order."""
    wanted = sorted(name.upper() for name in formats if name.upper() != DICOM)
    if any(name not in Image.OPEN for name in wanted):
        Image.init()  # registers every installed plugin; runs once per process
    unknown = [name for name in wanted if name not in Image.OPEN]
    if unknown:
        raise ValueError(f"unknown image formats {unknown}; known: {sorted(Image.OPEN)}")
    return tuple((name, *Image.OPEN[name]) for name in wanted)


def _open_checked(data: bytes, openers: tuple[Opener, ...], max_pixels: int) -> ImageFile.ImageFile:
    """Identify the container from its leading bytes and check the declared size; no pixels yet.

    Calling the allowed formats' own openers (instead of ``Image.open``) keeps other plugins from
    ever parsing our bytes and leaves the size decision to ``max_pixels`` alone.
    """
    failures = []
    for name, factory, accept in openers:
        verdict = accept(data[:16]) if accept else True
        if not verdict or isinstance(verdict, str):
            continue
        try:
            im = factory(io.BytesIO(data), "")
        except Image.DecompressionBombError:
            raise
        except Exception as exc:  # the signature matched, so a failing header means corrupt
            failures.append(f"{name}: {_describe(exc)}")
            continue
        width, height = im.size
        if width * height > max_pixels:
            detail = f"{width}x{height} = {width * height} pixels > limit {max_pixels}"
            raise ItemError(Reason.TOO_MANY_PIXELS, detail)
        return im
    if failures:
        raise ItemError(Reason.DECODE_ERROR, "; ".join(failures))
    raise _not_allowed(data)


def _not_allowed(data: bytes) -> ItemError:
    """Tell an image in a format we do not accept from bytes that are no image at all."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return ItemError(Reason.UNSUPPORTED_FORMAT, f"{im.format} is not an allowed format")
    except Image.DecompressionBombError as exc:  # identified, and huge besides
        return ItemError(Reason.UNSUPPORTED_FORMAT, f"not an allowed format: {exc}")
    except Image.UnidentifiedImageError:
        return ItemError(Reason.NOT_AN_IMAGE, "no known image signature in the leading bytes")
    except Exception as exc:
        return ItemError(Reason.NOT_AN_IMAGE, _describe(exc))


def _decode_with_cv2(data: bytes, im: ImageFile.ImageFile) -> np.ndarray | None:
    """Decode a plain 8-bit RGB/gray JPEG with OpenCV: faster than Pillow, same pixels.

    Both wrap libjpeg-turbo with the same settings (the tests hold them equal). Returns None when
    Pillow must decode: another container or mode, an EXIF rotation, or bytes OpenCV refuses;
    Pillow, the one authority on what is decodable, then decodes them or raises.
    """
    flag = {"RGB": cv2.IMREAD_COLOR_RGB, "L": cv2.IMREAD_GRAYSCALE}.get(im.mode)
    if im.format != "JPEG" or flag is None or _orientation(im) in _ROTATED:
        return None
    buffer = np.frombuffer(data, np.uint8)
    pixels = cv2.imdecode(buffer, flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None or pixels.shape[:2] != (im.height, im.width):
        return None
    return pixels.reshape(im.height, im.width, -1)


def _orientation(im: Image.Image) -> int:
    return im.getexif().get(ExifTags.Base.Orientation, 1)


def _decode_with_pillow(im: ImageFile.ImageFile) -> np.ndarray:
    """Decode with Pillow and normalise the pixel mode explicitly (rules in the module notes)."""
    im.load()
    ImageOps.exif_transpose(im, in_place=True)
    mode = im.mode
    if mode in _UINT16_MODES:
        return _channels_last(np.asarray(im).astype(np.uint16))  # also fixes big-endian order
    if mode == "I":
        return _channels_last(_int_to_uint16(np.asarray(im)))
    if mode == "1":
        im = im.convert("L")
    if im.mode in ("L", "RGB") and "transparency" in im.info:
        im = im.convert("LA" if im.mode == "L" else "RGBA")
    if im.mode in _ALPHA_MODES:
        return _over_white(im.convert(_ALPHA_MODES[im.mode]))
    if im.mode in _COLOUR_MODES:
        im = im if im.mode == "RGB" else im.convert("RGB")
    elif im.mode != "L":
        raise ItemError(Reason.UNSUPPORTED_FORMAT, f"pixel mode {mode!r} has no defined mapping")
    return _channels_last(np.array(im))


def _int_to_uint16(values: np.ndarray) -> np.ndarray:
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        detail = f"32-bit pixels span {low}..{high}, outside 0..65535; no scaling is assumed"
        raise ItemError(Reason.UNSUPPORTED_FORMAT, detail)
    return values.astype(np.uint16)


def _over_white(im: Image.Image) -> np.ndarray:
    """Composite LA/RGBA over white in integers: exact and identical on every platform."""
    values = np.asarray(im).astype(np.uint16)
    colour, alpha = values[..., :-1], values[..., -1:]
    blended = (colour * alpha + 255 * (255 - alpha) + 127) // 255
    return blended.astype(np.uint8)


def _channels_last(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., np.newaxis] if pixels.ndim == 2 else pixels


def _encodable(image: np.ndarray, fmt: str) -> np.ndarray:
    """Validate an array for encoding and return it as contiguous (H, W) or (H, W, 3)."""
    if fmt not in _ENCODERS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {sorted(_ENCODERS)}")
    pixels = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"expected (H, W), (H, W, 1) or (H, W, 3) pixels, got {image.shape}")
    if pixels.dtype == np.uint16 and fmt != "png":
        raise ValueError(f"{fmt} stores 8 bits per channel; 16-bit pixels need format png")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be uint8 or uint16, got {pixels.dtype}")
    return np.ascontiguousarray(pixels)
