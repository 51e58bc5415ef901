"""Errors: fatal ones stop a run before compute; item ones become quarantine rows."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why an item was quarantined. Values are stable: they are written to Parquet."""

    EMPTY_OBJECT = "empty_object"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DECODE_ERROR = "decode_error"
    TOO_MANY_PIXELS = "too_many_pixels"
    BAD_IMAGE_ID = "bad_image_id"
    READ_ERROR = "read_error"
    SOURCE_CHANGED = "source_changed"  # the object is not the one listed (replaced since)
    MISSING = "missing"
    MASK_ERROR = "mask_error"
    EMPTY_MASK = "empty_mask"
    INPAINT_ERROR = "inpaint_error"
    AUGMENT_ERROR = "augment_error"
    ENCODE_ERROR = "encode_error"
    WRITE_ERROR = "write_error"
    WORKER_CRASH = "worker_crash"  # the item killed its worker process on every attempt
    TIMEOUT = "timeout"  # the item ran past compute.item_timeout_s
    BURNED_IN_ANNOTATION = "burned_in_annotation"  # DICOM says text is burned into the pixels
    UNEXPECTED_ERROR = "unexpected_error"  # an exception no stage expected: a bug to report


class ItemError(Exception):
    """One item cannot be processed; the run goes on and the item is quarantined."""

    def __init__(self, reason: Reason, detail: str, stage: str | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.stage = stage


class ManifestError(ValueError):
    """The manifest is invalid; raised before any compute. ``path`` is the dotted field path."""

    def __init__(self, path: str, message: str, hint: str = "") -> None:
        super().__init__(f"{path}: {message}" + (f"\n  hint: {hint}" if hint else ""))
        self.path = path
        self.message = message
        self.hint = hint


class RunError(RuntimeError):
    """The run cannot start or cannot commit (unreadable source, non-empty output, error rate)."""
