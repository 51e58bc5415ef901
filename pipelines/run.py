"""Running a manifest: plan, execute on Ray, stream rows to the sink, commit with provenance."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from inpaint_ops.weights import WeightsError
from pipelines.errors import RunError
from pipelines.manifest import Manifest
from pipelines.manifest_loader import LoadedManifest
from pipelines.process import RunPlan
from pipelines.provenance import code_version, environment, manifest_record
from pipelines.sink import DatasetSink
from pipelines.sources import Annotations, SourceItem, list_sources, load_annotations
from pipelines.weights import fetch_weights

Progress = Callable[[int, int], None]  # (items done so far, items in total)


@dataclass
class RunSummary:
    """What a run did; printed as a table or as JSON, and stored in the run record."""

    name: str
    run_id: str
    status: str
    output_uri: str
    items_in: int = 0
    items_ok: int = 0
    items_quarantined: int = 0
    rows_written: int = 0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    images_per_s: float = 0.0
    timings_s: dict[str, float] = field(default_factory=dict)
    committed: str | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PlannedRun:
    """The items a run would process, known before any compute (``pipeline plan``)."""

    items: list[SourceItem]
    annotations: dict[str, Annotations]
    annotated: int
    unmatched_annotations: int
    rows_expected: int


def plan_run(loaded: LoadedManifest, limit: int | None = None) -> PlannedRun:
    """List sources and join annotations; no pixels are read."""
    m = loaded.manifest
    if limit is not None and limit < 1:
        raise RunError(f"--limit must be at least 1, got {limit}")
    items = list_sources(m.source)
    if limit is not None:
        items = items[:limit]
    annotations = (
        load_annotations(m.source.annotations, m.source.storage_options)
        if m.source.annotations
        else {}
    )
    ids = {item.image_id for item in items}
    annotated = sum(1 for item in items if item.image_id in annotations)
    unmatched = sum(1 for key in annotations if key not in ids)
    return PlannedRun(items, annotations, annotated, unmatched, len(items) * m.variants)


def run_manifest(
    loaded: LoadedManifest,
    *,
    limit: int | None = None,
    address: str | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Execute the manifest end to end.

    Returns the summary (status ``committed``, or ``failed`` when too many items were
    quarantined); raises RunError, with nothing committed, on a fatal problem.
    """
    m = loaded.manifest
    _refuse_process_local(m.source.uri, m.output.uri)
    started, t0 = datetime.now(UTC), time.perf_counter()
    run_id = started.strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    summary = RunSummary(m.name, run_id, "running", m.output.uri)
    sink = DatasetSink(m.output, run_id)
    sink.check_target()
    planned = plan_run(loaded, limit)
    if not planned.items:
        raise RunError(f"no images under source.uri {m.source.uri!r} match glob {m.source.glob!r}")
    summary.items_in = len(planned.items)
    weights = check_weights(m)
    plan = RunPlan(m, loaded.fingerprint, run_id, code_version(), weights)
    timings = {"plan": time.perf_counter() - t0}
    record = _record(loaded, summary, started)
    record["weights"] = {
        spec.label: {"uri": spec.weights_uri(), "sha256": weights[spec.label]}
        for spec in m.inpainters
        if spec.label in weights
    }
    sink.open()
    try:
        _execute(plan, work_items(planned), sink, address, progress, record, timings)
        _count(summary, sink, m.variants * len(m.inpainters))
    except Exception as exc:  # record why, keep the staged rows for inspection, commit nothing
        summary.status, summary.message = "failed", f"{type(exc).__name__}: {exc}"
        _finish(summary, timings, t0, record)
        sink.abort(record)
        raise RunError(f"run {run_id} failed: {summary.message}") from exc
    rate = summary.items_quarantined / summary.items_in
    if rate > m.compute.max_error_rate:
        summary.status = "failed"
        summary.message = (
            f"{summary.items_quarantined} of {summary.items_in} items quarantined "
            f"({rate:.1%} > compute.max_error_rate {m.compute.max_error_rate:.1%}); nothing committed"
        )
        _finish(summary, timings, t0, record)
        sink.abort(record)
        return summary
    summary.status = "committed"
    _finish(summary, timings, t0, record)
    summary.committed = sink.commit(record)
    summary.timings_s["commit"] = round(time.perf_counter() - t0 - summary.wall_s, 3)
    return summary


def check_weights(manifest: Manifest) -> dict[str, str]:
    """sha256 of every inpainter's weights, fetched and checked against its pin before compute.

    TorchScript weights (``requires_pin``) are refused without a pin: loading them runs code.
    """
    found = {}
    for spec in manifest.inpainters:
        uri = spec.weights_uri()
        if uri is None:
            continue
        try:
            local = fetch_weights(
                uri,
                getattr(spec, "storage_options", {}),
                expected_sha256=getattr(spec, "weights_sha256", None),
                require_pin=getattr(spec, "requires_pin", False),
            )
            spec.check_files(local.path)
        except WeightsError as exc:
            raise RunError(f"inpainter {spec.label!r}: {exc}") from None
        found[spec.label] = local.sha256
    return found


def _refuse_process_local(*uris: str) -> None:
    for uri in uris:
        if uri.startswith("memory://"):
            raise RunError(
                f"{uri!r}: memory:// lives inside one process and Ray workers cannot see it; "
                "use a folder or a bucket"
            )


def _execute(
    plan: RunPlan,
    items: list[dict[str, Any]],
    sink: DatasetSink,
    address: str | None,
    progress: Progress | None,
    record: dict[str, Any],
    timings: dict[str, float],
) -> None:
    from pipelines.ray_plan import execute, gpus_to_use, ray_session

    start = time.perf_counter()
    with ray_session(address) as ray_info:
        gpus = gpus_to_use(plan.manifest.compute.gpus_per_actor)
        record["ray"] = {"address": str(ray_info.get("address")), "gpus_per_actor": gpus}
        timings["ray_init"] = time.perf_counter() - start
        _stream(execute(plan, items, gpus), sink, len(items), progress)
        sink.flush()
    timings["execute"] = time.perf_counter() - start - timings["ray_init"]
    timings["index_write"] = sink.index_write_s  # part of execute, reported for target G10


def _stream(tables: Any, sink: DatasetSink, total: int, progress: Progress | None) -> None:
    done = 0
    for table in tables:
        sink.add(table)
        # every item yields rows all in one batch: distinct ids in a batch are finished items
        done += len(set(table["image_id"].to_pylist()))
        if progress:
            progress(done, total)


def work_items(planned: PlannedRun) -> list[dict[str, Any]]:
    """The per-item payload sent to workers: id, URI, size and joined boxes/labels."""
    items = []
    for item in planned.items:
        ann = planned.annotations.get(item.image_id)
        items.append(
            {
                "image_id": item.image_id,
                "uri": item.uri,
                "size": item.size,
                "boxes": ann.boxes.tolist() if ann else [],
                "labels": list(ann.labels) if ann else [],
            }
        )
    return items


def _count(summary: RunSummary, sink: DatasetSink, variants: int) -> None:
    summary.rows_written = sink.rows_ok
    summary.items_ok = sink.rows_ok // variants
    summary.items_quarantined = sink.rows_quarantined
    summary.quarantine_reasons = dict(sorted(sink.reasons.items()))
    if summary.items_ok + summary.items_quarantined != summary.items_in:
        raise RunError(
            f"conservation broken: items_in {summary.items_in} != ok {summary.items_ok} + "
            f"quarantined {summary.items_quarantined}; nothing committed"
        )


def _finish(
    summary: RunSummary, timings: dict[str, float], t0: float, record: dict[str, Any]
) -> None:
    summary.wall_s = round(time.perf_counter() - t0, 3)
    summary.images_per_s = (
        round(summary.rows_written / summary.wall_s, 3) if summary.wall_s else 0.0
    )
    summary.timings_s = {k: round(v, 3) for k, v in timings.items()}
    record["status"] = summary.status
    record["finished_at"] = datetime.now(UTC).isoformat()
    record["summary"] = summary.as_dict()


def _record(loaded: LoadedManifest, summary: RunSummary, started: datetime) -> dict[str, Any]:
    return {
        "run_id": summary.run_id,
        "name": summary.name,
        "started_at": started.isoformat(),
        "manifest_sha256": loaded.fingerprint,
        "manifest": manifest_record(loaded),
        "code_version": code_version(),
        "environment": environment(),
    }
