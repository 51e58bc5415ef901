"""The work for one source image: read, decode, mask, fill, augment, encode, write, describe.

Plain Python with no Ray in it, so the same code runs in a Ray actor, a process pool or a test.
Every failure becomes a quarantine row with a reason; an item is all-or-nothing (its variants are
written only when every one of them succeeded), so items_in = items_ok + items_quarantined.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inpaint_ops.augment import Augmented, build_augmenter
from inpaint_ops.composite import blank_fill, composite, leak, mask_fraction
from inpaint_ops.inpainters.base import FillJob, InpainterSpec, InpaintFn, fill_many
from inpaint_ops.masks.base import MaskResult
from pipelines import layout
from pipelines.c2pa_credentials import C2paSigner
from pipelines.codec import encode_image, encode_mask
from pipelines.content_credentials import embed_xmp, source_type_for, xmp_packet
from pipelines.errors import ItemError, Reason, RunError
from pipelines.manifest import Manifest, canonical_json
from pipelines.prepare import Prepared, SourceReader, guard
from pipelines.pseudonyms import SOURCE_KEY, scrub
from pipelines.seeding import rng_for, unit_interval
from pipelines.sources import filesystem
from pipelines.storage import publish_bytes
from pipelines.weights import fetch_weights

_log = logging.getLogger("synthfill")


@dataclass(frozen=True)
class RunPlan:
    """Everything a worker needs; small and picklable (no filesystem objects, no secrets)."""

    manifest: Manifest
    manifest_sha256: str
    run_id: str
    code_version: str
    # label -> sha256 of the weights the driver checked before compute (inpainters with weights)
    weights_sha256: dict[str, str] = field(default_factory=dict)


@dataclass
class _Output:
    row: dict[str, Any]
    image_bytes: bytes
    mask_bytes: bytes


@dataclass(frozen=True)
class LoadedInpainter:
    """One inpainter of the manifest, loaded in this worker."""

    spec: InpainterSpec
    fill: InpaintFn
    params: str
    weights_sha256: str | None
    device: str  # where it actually runs (a GPU request falls back to the CPU without one)


class ItemProcessor:
    """Processes items for one run; build once per worker (loads the inpainters once)."""

    def __init__(self, plan: RunPlan, device: str = "cpu") -> None:
        m = plan.manifest
        self.plan, self.device = plan, device
        self.fallbacks = 0  # batched fills retried item by item
        kinds = tuple(s.kind for s in m.masks)
        self.inpainters = [self._load(spec.for_masks(kinds)) for spec in m.inpainters]
        self.augmenter = build_augmenter(m.augment)
        self.reader = SourceReader(plan)
        self.out_fs, self.out_root = filesystem(m.output.uri, m.output.storage_options)
        self.out_root = self.out_root.rstrip("/")
        self.c2pa = C2paSigner(m.output.c2pa) if m.output.c2pa is not None else None
        self.mask_params = canonical_json([s.model_dump(mode="json") for s in m.masks])
        self.mask_kind = "+".join(s.kind for s in m.masks)

    def _load(self, spec: InpainterSpec) -> LoadedInpainter:
        uri = spec.weights_uri()
        local = None
        if uri is not None:
            # The driver checked the weights before any compute; load exactly those bytes.
            pinned = self.plan.weights_sha256.get(spec.label)
            if pinned is None:
                raise RunError(
                    f"inpainter {spec.label!r} has weights but the run plan has no checked hash "
                    "for them (build plans with pipelines.run.check_weights)"
                )
            local = fetch_weights(uri, getattr(spec, "storage_options", {}), expected_sha256=pinned)
        params = canonical_json(spec.model_dump(mode="json", exclude={"storage_options"}))
        fill = spec.load(self.device, local.path if local else None)
        device = str(getattr(fill, "device", "cpu"))
        return LoadedInpainter(spec, fill, params, local.sha256 if local else None, device)

    def __call__(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows for one item: one per variant and inpainter, or a single quarantine row."""
        return self.process([item])

    def process(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows for a batch of items; fills of the whole batch share model calls."""
        prepared = [self.reader.prepare(dict(item)) for item in items]
        ready = [p for p in prepared if p.error is None]
        for inpainter in self.inpainters:
            self._fill(inpainter, ready)
        rows: list[dict[str, Any]] = []
        for p in prepared:
            if p.error is None:
                try:
                    rows.extend(self._finish(p))
                except ItemError as err:
                    p.error = err
            if p.error is not None:
                rows.append(self._quarantine(p.item, p.error, p.start))
            p.image, p.fills, p.masks = None, {}, []  # free each item once it is written
        return rows

    def _fill(self, inpainter: LoadedInpainter, ready: list[Prepared]) -> None:
        """Fill every variant of every ready item, batched; a failure stays with its item."""
        label = inpainter.spec.label
        ready = [p for p in ready if p.error is None]  # an earlier inpainter may have failed one
        jobs = [self._jobs(p) for p in ready]
        try:
            flat = fill_many(inpainter.fill, [job for item_jobs in jobs for job in item_jobs])
        except Exception as exc:  # retried item by item below, so the error lands on its item
            _log.warning("%s: a batched fill failed (%s); filling item by item", label, exc)
            self.fallbacks += 1
            flat = None
        at = 0
        for p, item_jobs in zip(ready, jobs, strict=True):
            at += len(item_jobs)
            if flat is not None:
                p.fills[label] = flat[at - len(item_jobs) : at]
                continue
            try:
                with guard("inpaint", Reason.INPAINT_ERROR):
                    p.fills[label] = fill_many(inpainter.fill, self._jobs(p))
            except ItemError as err:
                err.detail = f"{label}: {err.detail}"
                p.error = err

    def _jobs(self, p: Prepared) -> list[FillJob]:
        assert p.image is not None
        return [
            (p.image, made.mask, rng_for(seed, "inpaint"))
            for made, seed in zip(p.masks, p.seeds, strict=True)
        ]

    def _finish(self, p: Prepared) -> list[dict[str, Any]]:
        outs = [
            self._output(p, v, inpainter)
            for v in range(len(p.masks))
            for inpainter in self.inpainters
        ]
        p.item["variant"] = p.item["seed"] = None  # a write failure concerns the whole item
        with guard("write", Reason.WRITE_ERROR):
            for out in outs:
                publish_bytes(self.out_fs, self._path(out.row["output_uri"]), out.image_bytes)
                publish_bytes(self.out_fs, self._path(out.row["mask_uri"]), out.mask_bytes)
        per_output = (time.perf_counter() - p.start) * 1000 / len(outs)
        for out in outs:
            out.row["elapsed_ms"] = round(per_output, 3)
        return [out.row for out in outs]

    def _output(self, p: Prepared, v: int, inpainter: LoadedInpainter) -> _Output:
        m, image, context, made = self.plan.manifest, p.image, p.context, p.masks[v]
        assert image is not None and context is not None
        p.item["variant"], p.item["seed"] = v, p.seeds[v]
        filled = p.fills[inpainter.spec.label][v]
        with guard("inpaint", Reason.INPAINT_ERROR):
            fill_leak = leak(image, filled, made.mask)["max_abs"]
            # A flat classical fill of a flat region is right; a flat model output is not.
            is_blank = blank_fill(filled, made.mask) if inpainter.weights_sha256 else None
            output = composite(image, filled, made.mask)
        with guard("mask", Reason.MASK_ERROR):
            keep = np.ones(len(context.boxes), dtype=bool)
            keep[list(made.removed)] = False
            labels = tuple(lbl for lbl, k in zip(context.labels, keep, strict=True) if k)
        edit = Augmented(output, made.mask, context.boxes[keep], labels, [])
        if self.augmenter is not None:
            with guard("augment", Reason.AUGMENT_ERROR):
                edit = self.augmenter(
                    edit.image, edit.mask, edit.boxes, edit.labels, rng_for(p.seeds[v], "augment")
                )
        with guard("encode", Reason.ENCODE_ERROR):
            fmt = m.output
            image_bytes = encode_image(edit.image, fmt.format, fmt.quality, fmt.png_level)
            image_bytes = embed_xmp(image_bytes, fmt.format, self._xmp(inpainter, p.seeds[v], v))
            if self.c2pa is not None:
                image_bytes = self._c2pa(image_bytes, p.item, inpainter)
            mask_bytes = encode_mask(edit.mask)
        row = self._row(p.item, image, made, edit, image_bytes, mask_bytes, inpainter)
        row["fill_leak_max"] = float(fill_leak)
        row["fill_blank"] = is_blank
        return _Output(row, image_bytes, mask_bytes)

    def _c2pa(self, data: bytes, item: dict[str, Any], inpainter: LoadedInpainter) -> bytes:
        assert self.c2pa is not None
        fields = {
            "manifest_sha256": self.plan.manifest_sha256,
            "source_sha256": item["source_sha256"],
            "seed": item["seed"],
            "variant": item["variant"],
            "inpainter": inpainter.spec.label,
            "weights_sha256": inpainter.weights_sha256,
        }
        trained = source_type_for(inpainter.weights_sha256 is not None)
        return self.c2pa.sign(data, self.plan.manifest.output.format, trained, fields)

    def _xmp(self, inpainter: LoadedInpainter, seed: int, variant: int) -> bytes:
        """The output's content credentials (fixed by the recipe and seed: same bytes again)."""
        fields = {
            "manifest_sha256": self.plan.manifest_sha256,
            "seed": str(seed),
            "variant": str(variant),
            "inpainter": inpainter.spec.label,
        }
        return xmp_packet(source_type_for(inpainter.weights_sha256 is not None), fields)

    def _row(
        self,
        item: dict[str, Any],
        image: np.ndarray,
        made: MaskResult,
        edit: Augmented,
        image_bytes: bytes,
        mask_bytes: bytes,
        inpainter: LoadedInpainter,
    ) -> dict[str, Any]:
        m, image_id, v = self.plan.manifest, item["image_id"], item["variant"]
        tag = layout.content_tag(self.plan.manifest_sha256, item["source_sha256"])
        # Several inpainters side by side each get their own keys; one keeps the plain ones.
        label = inpainter.spec.label if len(self.inpainters) > 1 else None
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
            "mask_uri": self._uri(layout.mask_key(image_id, v, tag, label)),
            "mask_sha256": hashlib.sha256(mask_bytes).hexdigest(),
            "inpainter": inpainter.spec.label,
            "inpainter_params": inpainter.params,
            "weights_sha256": inpainter.weights_sha256,
            "inpaint_device": inpainter.device,
            "augment_params": canonical_json(edit.params),
            "output_uri": self._uri(layout.output_key(image_id, v, m.output.format, tag, label)),
            "output_sha256": hashlib.sha256(image_bytes).hexdigest(),
            "output_width": edit.image.shape[1],
            "output_height": edit.image.shape[0],
            "boxes": edit.boxes.tolist(),
            "labels": list(edit.labels),
            "removed_boxes": [b for i, b in enumerate(item["boxes"]) if i in removed],
            "removed_labels": [lbl for i, lbl in enumerate(item["labels"]) if i in removed],
            "source_boxes": item["boxes"],
            "source_labels": item["labels"],
        }

    def _lineage(self, item: dict[str, Any], status: str) -> dict[str, Any]:
        return {
            "image_id": item["image_id"],
            "variant": item.get("variant"),
            "seed": item.get("seed"),
            "source_uri": item["uri"],
            "source_sha256": item.get("source_sha256"),
            # what the listing said about the source (ETag, or size and mtime): the next
            # night compares it to tell unchanged sources from new or changed ones
            "source_etag": item.get("etag"),
            "run_id": self.plan.run_id,
            "manifest_sha256": self.plan.manifest_sha256,
            "code_version": self.plan.code_version,
            "status": status,
            "error": None,
        }

    def quarantine_row(
        self, item: dict[str, Any], reason: Reason, detail: str, stage: str
    ) -> dict[str, Any]:
        """The quarantine row for an item stopped outside its own processing (a worker that
        died on it, a time limit, an exception no stage expected)."""
        return self._quarantine(dict(item), ItemError(reason, detail, stage), time.perf_counter())

    def _quarantine(self, item: dict[str, Any], err: ItemError, start: float) -> dict[str, Any]:
        row = self._lineage(item, "quarantined")
        detail = err.detail
        if item.get(SOURCE_KEY):  # an OS or storage error may quote the real path
            detail = scrub(detail, item[SOURCE_KEY], item["image_id"])
        row.update(
            reason=err.reason.value,
            error=detail[:2000],
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
