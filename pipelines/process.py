"""The work for one source image: read, decode, mask, fill, augment, encode, write, describe.

Plain Python with no Ray in it, so the same code runs in a Ray actor, a process pool or a test.
Every failure becomes a quarantine row with a reason; an item is all-or-nothing (its variants are
written only when every one of them succeeded), so items_in = items_ok + items_quarantined.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from inpaint_ops.augment import Augmented, build_augmenter
from inpaint_ops.composite import composite, leak, mask_fraction
from inpaint_ops.masks import FromFiles, combine
from inpaint_ops.masks.base import MaskContext, MaskResult
from pipelines import layout
from pipelines.codec import decode_image, decode_mask, encode_image, encode_mask
from pipelines.errors import ItemError, Reason
from pipelines.manifest import Manifest, canonical_json
from pipelines.seeding import rng_for, unit_interval, variant_seed
from pipelines.sources import filesystem, read_bytes
from pipelines.storage import publish_bytes


@dataclass(frozen=True)
class RunPlan:
    """Everything a worker needs; small and picklable (no filesystem objects, no secrets)."""

    manifest: Manifest
    manifest_sha256: str
    run_id: str
    code_version: str


@contextmanager
def guard(stage: str, reason: Reason) -> Iterator[None]:
    """Turn any exception inside a stage into an ItemError naming the stage and a reason."""
    try:
        yield
    except ItemError as err:
        err.stage = err.stage or stage
        raise
    except Exception as exc:  # every failure becomes a quarantine row naming it
        raise ItemError(reason, f"{type(exc).__name__}: {exc}", stage) from exc


@dataclass
class _Variant:
    row: dict[str, Any]
    image_bytes: bytes
    mask_bytes: bytes


class ItemProcessor:
    """Processes items for one run; build once per worker (loads the inpainter once)."""

    def __init__(self, plan: RunPlan, device: str = "cpu") -> None:
        m = plan.manifest
        self.plan = plan
        self.fill = m.inpainter.load(device)
        self.augmenter = build_augmenter(m.augment)
        self.out_fs, self.out_root = filesystem(m.output.uri, m.output.storage_options)
        self.out_root = self.out_root.rstrip("/")
        self.user_masks = next((s for s in m.masks if isinstance(s, FromFiles)), None)
        self.mask_params = canonical_json([s.model_dump(mode="json") for s in m.masks])
        self.mask_kind = "+".join(s.kind for s in m.masks)
        self.inpainter_params = canonical_json(m.inpainter.model_dump(mode="json"))
        self.weights_sha256 = m.inpainter.weights_sha256()

    def __call__(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows for one item: one per variant, or a single quarantine row."""
        start = time.perf_counter()
        try:
            return self._process(item, start)
        except ItemError as err:
            return [self._quarantine(item, err, start)]

    def _process(self, item: dict[str, Any], start: float) -> list[dict[str, Any]]:
        m = self.plan.manifest
        with guard("read", Reason.BAD_IMAGE_ID):
            layout.check_image_id(item["image_id"])
        with guard("read", Reason.READ_ERROR):
            try:
                data = read_bytes(item["uri"], m.source.storage_options)
            except FileNotFoundError as exc:
                raise ItemError(Reason.MISSING, f"{item['uri']} no longer exists", "read") from exc
        item["source_sha256"] = hashlib.sha256(data).hexdigest()
        with guard("decode", Reason.DECODE_ERROR):
            image = decode_image(data, max_pixels=m.source.max_pixels, name=item["image_id"])
        context = self._context(item, image)
        variants = []
        for v in range(m.variants):
            item["variant"] = v
            variants.append(self._variant(image, context, item))
        item["variant"] = item["seed"] = None  # a write failure concerns the whole item
        with guard("write", Reason.WRITE_ERROR):
            for out in variants:
                publish_bytes(self.out_fs, self._path(out.row["output_uri"]), out.image_bytes)
                publish_bytes(self.out_fs, self._path(out.row["mask_uri"]), out.mask_bytes)
        per_variant = (time.perf_counter() - start) * 1000 / len(variants)
        for out in variants:
            out.row["elapsed_ms"] = round(per_variant, 3)
        return [out.row for out in variants]

    def _context(self, item: dict[str, Any], image: np.ndarray) -> MaskContext:
        boxes = np.asarray(item.get("boxes") or [], dtype=np.float64).reshape(-1, 4)
        labels = tuple(item.get("labels") or ())
        user_mask = None
        if self.user_masks is not None:
            user_mask = self._read_user_mask(item["image_id"])
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

    def _variant(self, image: np.ndarray, context: MaskContext, item: dict[str, Any]) -> _Variant:
        m = self.plan.manifest
        seed = item["seed"] = variant_seed(m.seed, item["image_id"], item["variant"])
        with guard("mask", Reason.MASK_ERROR):
            made = combine(m.masks, image, context, rng_for(seed, "mask"))
        if not made.mask.any():
            raise ItemError(Reason.EMPTY_MASK, f"{self.mask_kind} produced an empty mask", "mask")
        with guard("inpaint", Reason.INPAINT_ERROR):
            filled = self.fill(image.copy(), made.mask, rng_for(seed, "inpaint"))
            fill_leak = leak(image, filled, made.mask)["max_abs"]
            output = composite(image, filled, made.mask)
        keep = np.ones(len(context.boxes), dtype=bool)
        keep[list(made.removed)] = False
        labels = tuple(lbl for lbl, k in zip(context.labels, keep, strict=True) if k)
        edit = Augmented(output, made.mask, context.boxes[keep], labels, [])
        if self.augmenter is not None:
            with guard("augment", Reason.AUGMENT_ERROR):
                edit = self.augmenter(
                    edit.image, edit.mask, edit.boxes, edit.labels, rng_for(seed, "augment")
                )
        with guard("encode", Reason.ENCODE_ERROR):
            fmt = m.output
            image_bytes = encode_image(edit.image, fmt.format, fmt.quality, fmt.png_level)
            mask_bytes = encode_mask(edit.mask)
        row = self._row(item, image, made, edit, image_bytes, mask_bytes)
        row["fill_leak_max"] = float(fill_leak)
        return _Variant(row, image_bytes, mask_bytes)

    def _row(
        self,
        item: dict[str, Any],
        image: np.ndarray,
        made: MaskResult,
        edit: Augmented,
        image_bytes: bytes,
        mask_bytes: bytes,
    ) -> dict[str, Any]:
        m, image_id, v = self.plan.manifest, item["image_id"], item["variant"]
        tag = layout.content_tag(self.plan.manifest_sha256, item["source_sha256"])
        removed = set(made.removed)
        return {
            **self._lineage(item, "ok"),
            "split": assign_split(image_id, m),
            "width": image.shape[1],
            "height": image.shape[0],
            "channels": image.shape[2],
            "bit_depth": image.dtype.itemsize * 8,
            "mask_kind": self.mask_kind,
            "mask_params": self.mask_params,
            "mask_info": json.dumps(made.info, sort_keys=True, default=str),
            "mask_fraction": mask_fraction(edit.mask),
            "mask_uri": self._uri(layout.mask_key(image_id, v, tag)),
            "mask_sha256": hashlib.sha256(mask_bytes).hexdigest(),
            "inpainter": m.inpainter.kind,
            "inpainter_params": self.inpainter_params,
            "weights_sha256": self.weights_sha256,
            "augment_params": canonical_json(edit.params),
            "output_uri": self._uri(layout.output_key(image_id, v, m.output.format, tag)),
            "output_sha256": hashlib.sha256(image_bytes).hexdigest(),
            "output_width": edit.image.shape[1],
            "output_height": edit.image.shape[0],
            "boxes": edit.boxes.tolist(),
            "labels": list(edit.labels),
            "removed_boxes": [b for i, b in enumerate(item["boxes"]) if i in removed],
            "removed_labels": [lbl for i, lbl in enumerate(item["labels"]) if i in removed],
        }

    def _lineage(self, item: dict[str, Any], status: str) -> dict[str, Any]:
        return {
            "image_id": item["image_id"],
            "variant": item.get("variant"),
            "seed": item.get("seed"),
            "source_uri": item["uri"],
            "source_sha256": item.get("source_sha256"),
            "run_id": self.plan.run_id,
            "manifest_sha256": self.plan.manifest_sha256,
            "code_version": self.plan.code_version,
            "status": status,
            "error": None,
        }

    def _quarantine(self, item: dict[str, Any], err: ItemError, start: float) -> dict[str, Any]:
        row = self._lineage(item, "quarantined")
        row.update(
            reason=err.reason.value,
            error=err.detail[:2000],
            stage=err.stage,
            elapsed_ms=round((time.perf_counter() - start) * 1000, 3),
        )
        return row

    def _uri(self, key: str) -> str:
        return self.out_fs.unstrip_protocol(layout.join(self.out_root, key))

    def _path(self, uri: str) -> str:
        return self.out_fs._strip_protocol(uri)


def assign_split(image_id: str, manifest: Manifest) -> str:
    """train/val/test from a stable hash of the item's group key (never from row position)."""
    spec = manifest.split
    group = image_id
    if spec.group_pattern is not None:
        found = re.search(spec.group_pattern, image_id)
        group = found.group(1) if found else image_id
    u = unit_interval(group)
    return "train" if u < spec.train else "val" if u < spec.train + spec.val else "test"
