"""The first half of an item's work: read the source, decode it and draw every variant's mask.

Every failure is an ``ItemError`` naming the stage and a reason (see :func:`guard`); a failure
that is not the item's fault (credentials refused, a ``${NAME}`` unset on this node) is a
``RunError`` that stops the run with its cause.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from inpaint_ops.masks import FromFiles, combine
from inpaint_ops.masks.base import MaskContext, MaskResult
from pipelines import layout
from pipelines.codec import decode_image, decode_mask
from pipelines.credentials import access_hint
from pipelines.errors import ItemError, Reason, RunError
from pipelines.faults import strike
from pipelines.pseudonyms import SOURCE_KEY, scrub
from pipelines.seeding import rng_for, variant_seed
from pipelines.sources import filesystem, read_bytes, read_object

if TYPE_CHECKING:
    from pipelines.process import RunPlan


@contextmanager
def guard(stage: str, reason: Reason) -> Iterator[None]:
    """Turn any exception inside a stage into an ItemError naming the stage and a reason."""
    try:
        yield
    except ItemError as err:
        err.stage = err.stage or stage
        raise
    except RunError:  # not the item's fault (e.g. a ${NAME} unset on this node): stop the run
        raise
    except Exception as exc:  # every failure becomes a quarantine row naming it
        raise ItemError(reason, f"{type(exc).__name__}: {exc}", stage) from exc


@dataclass
class Prepared:
    """An item read, decoded and masked, waiting for its fills (or the error that stopped it)."""

    item: dict[str, Any]
    start: float
    image: np.ndarray | None = None
    context: MaskContext | None = None
    masks: list[MaskResult] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    fills: dict[str, list[np.ndarray]] = field(default_factory=dict)
    error: ItemError | None = None


class SourceReader:
    """Reads and masks items for one run; build once per worker."""

    def __init__(self, plan: RunPlan) -> None:
        m = plan.manifest
        self.plan = plan
        # Sources are read as root + image_id through one filesystem opened here: no per-item
        # URL parsing, and a ${NAME} missing on this node fails the actor at once.
        self.source_fs, self.source_root = filesystem(m.source.uri, m.source.storage_options)
        self.user_masks = next((s for s in m.masks if isinstance(s, FromFiles)), None)
        self.mask_kind = "+".join(s.kind for s in m.masks)

    def prepare(self, item: dict[str, Any]) -> Prepared:
        """The item read, decoded and masked (every variant), or the error that stopped it."""
        p = Prepared(item, time.perf_counter())
        try:
            self._read(p)
        except ItemError as err:
            p.error = err
        return p

    def _read(self, p: Prepared) -> None:
        m, item = self.plan.manifest, p.item
        with guard("read", Reason.UNEXPECTED_ERROR):
            strike(f"item:{item['image_id']}")  # reliability tests: poison, hung, failing items
        # A pseudonymous source is read by its real key; messages name only item["uri"].
        key = item.get(SOURCE_KEY) or item["image_id"]
        with guard("read", Reason.BAD_IMAGE_ID):
            layout.check_image_id(item["image_id"])
            layout.check_image_id(key)
        with guard("read", Reason.READ_ERROR):
            try:
                # Checked against the listing: a body cut short in transit is never decoded.
                data = read_object(
                    self.source_fs,
                    layout.join(self.source_root, key),
                    size=item.get("size"),
                    etag=item.get("etag"),
                    label=item["uri"],
                )
            except FileNotFoundError as exc:
                raise ItemError(Reason.MISSING, f"{item['uri']} no longer exists", "read") from exc
            except PermissionError as exc:
                # Refused credentials (expired, revoked) refuse every item alike: stop the run
                # with the cause instead of quarantining the whole source as read_error.
                private = item.get(SOURCE_KEY)  # the message quotes the real path
                cause = scrub(str(exc), private, item["image_id"]) if private else str(exc)
                raise RunError(
                    f"cannot read source {item['uri']}: {cause}" + access_hint(exc)
                ) from (None if private else exc)
        item["source_sha256"] = hashlib.sha256(data).hexdigest()
        with guard("decode", Reason.DECODE_ERROR):
            p.image = decode_image(
                data, max_pixels=m.source.max_pixels, name=item["image_id"], dicom=m.source.dicom
            )
        p.image.flags.writeable = False  # shared by every fill: an in-place edit is a bug
        with guard("read", Reason.READ_ERROR):
            p.context = self._context(item, p.image)
        for v in range(m.variants):
            item["variant"] = v
            seed = item["seed"] = variant_seed(m.seed, item["image_id"], v)
            with guard("mask", Reason.MASK_ERROR):
                made = combine(m.masks, p.image, p.context, rng_for(seed, "mask"))
            if not made.mask.any():
                raise ItemError(
                    Reason.EMPTY_MASK, f"{self.mask_kind} produced an empty mask", "mask"
                )
            p.masks.append(made)
            p.seeds.append(seed)
        item["variant"] = item["seed"] = None

    def _context(self, item: dict[str, Any], image: np.ndarray) -> MaskContext:
        boxes = np.asarray(item.get("boxes") or [], dtype=np.float64).reshape(-1, 4)
        labels = tuple(item.get("labels") or ())
        user_mask = None
        if self.user_masks is not None:
            user_mask = self._read_user_mask(item.get(SOURCE_KEY) or item["image_id"])
        return MaskContext(item["image_id"], boxes, labels, user_mask)

    def _read_user_mask(self, image_id: str) -> np.ndarray | None:
        spec = self.user_masks
        uri = spec.uri.rstrip("/") + "/" + spec.mask_key(image_id)
        with guard("mask", Reason.MASK_ERROR):
            try:
                data = read_bytes(uri, self.plan.manifest.source.storage_options)
            except FileNotFoundError:
                return None  # the generator reports the missing mask with the image_id
            return decode_mask(data, max_pixels=self.plan.manifest.source.max_pixels)
