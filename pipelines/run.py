"""Running a manifest: plan, execute on Ray, stream rows to the sink, commit with provenance."""

from __future__ import annotations

import gc
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from inpaint_ops.weights import WeightsError
from pipelines import layout
from pipelines.commit import commit_version
from pipelines.errors import RunError
from pipelines.manifest import Manifest
from pipelines.manifest_loader import LoadedManifest
from pipelines.planning import Work, plan_work, work_table
from pipelines.process import RunPlan
from pipelines.provenance import code_version, environment, manifest_record
from pipelines.signing import load_private_key
from pipelines.sink import DatasetSink
from pipelines.sweep import clean_up
from pipelines.versions import Version, VersionConflict, read_record
from pipelines.weights import fetch_weights

Progress = Callable[[int, int], None]  # (items done so far, items in total)
_log = logging.getLogger("synthfill")


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
    version: int | None = None  # the version this run committed (or found up to date)
    base_version: int | None = None  # the version it started from
    items_listed: int = 0  # sources listed; items_in of them needed processing
    items_unchanged: int = 0  # carried over from the base version as they were
    items_removed: int = 0  # in the base version but no longer listed: left out
    items_resumed: int = 0  # of items_in, finished by an interrupted attempt of this run
    new_generation: bool = False  # the recipe changed: nothing carried over

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_manifest(
    loaded: LoadedManifest,
    *,
    limit: int | None = None,
    address: str | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Execute the manifest: process new and changed sources, commit the next version.

    Returns the summary (status ``committed``; ``up_to_date`` when no source is new, changed
    or gone; ``failed`` when too many items were quarantined); raises RunError, with nothing
    committed, on a fatal problem. An interrupted run with the same recipe and base version is
    resumed: its finished items are kept, and it keeps its run id.
    """
    m = loaded.manifest
    _refuse_process_local(m.source.uri, m.output.uri)
    from pipelines.ray_plan import check_address  # (ray itself is imported only to execute)

    check_address(address)  # before listing what may be millions of keys
    started, t0 = datetime.now(UTC), time.perf_counter()
    run_id = started.strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    sink = DatasetSink(m.output, run_id, m.compute.checkpoint_s)
    work = plan_work(loaded, sink, limit)
    if work.resumes is not None:
        _log.warning("resuming run %s, interrupted before it committed", work.resumes)
    summary = RunSummary(m.name, sink.run_id, "running", m.output.uri)
    _describe(summary, work)
    if not work.to_process.num_rows and work.up_to_date:
        if sink.repaired is not None or sink.obsolete_staging(work.base.version):
            clean_up(sink, work.base)  # a run died after committing: sweep what it left
        summary.status = "up_to_date"
        summary.message = f"version {work.base.version} has every listed source; nothing to do"
        summary.version = work.base.version
        summary.wall_s = round(time.perf_counter() - t0, 3)
        return summary
    weights = check_weights(m)
    signing_key = load_private_key(m.output.sign_record) if m.output.sign_record else None
    plan = RunPlan(m, loaded.fingerprint, sink.run_id, code_version(), weights)
    timings = {"plan": time.perf_counter() - t0}
    record = _record(loaded, summary, started)
    record["incremental"] = work.describe()
    record["weights"] = {
        spec.label: {"uri": spec.weights_uri(), "sha256": weights[spec.label]}
        for spec in m.inpainters
        if spec.label in weights
    }
    sink.open(loaded.fingerprint, work.base_version, started.isoformat())
    remaining = sink.adopt(work.to_process)
    summary.items_resumed = sink.adopted_items
    record["incremental"]["resumed_items"] = sink.adopted_items
    failure = None
    try:
        if remaining.num_rows:
            items = work_table(replace(work.planned, sources=remaining))
            _execute(plan, items, sink, address, progress, record, timings, sink.adopted_items)
        _count(summary, sink, m.variants * len(m.inpainters))
    except Exception as exc:  # record why, keep the staged rows for a resume, commit nothing
        failure = _reason(exc)
    if failure is not None:
        # The error's traceback held Ray Data's executor, whose actors hold the CPUs until
        # their handles are collected: without this a next run in this process (a notebook, a
        # service, a test session) would wait for those CPUs forever.
        gc.collect()
        summary.status, summary.message = "failed", failure
        _finish(summary, timings, t0, record)
        sink.abort(record)
        raise RunError(f"run {sink.run_id} failed: {failure}")
    rate = summary.items_quarantined / summary.items_in if summary.items_in else 0.0
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
    version = _commit(sink, record, work, signing_key)
    summary.version = version.version
    summary.committed = sink.fs.unstrip_protocol(layout.join(sink.root, layout.COMMIT_MARKER))
    summary.timings_s["commit"] = round(time.perf_counter() - t0 - summary.wall_s, 3)
    return summary


def _reason(exc: BaseException) -> str:
    """The innermost RunError's words when there is one (a worker's fatal error arrives wrapped
    in Ray's traceback dump), else the exception's type and message."""
    found: BaseException | None = exc
    for _ in range(20):  # a chain, not a loop; bounded all the same
        if found is None:
            break
        original = getattr(found, "cause", None)  # Ray's RayTaskError keeps the original here
        if isinstance(original, RunError):
            return str(original)
        if isinstance(found, RunError) and found is not exc:
            return str(found).splitlines()[-1]
        found = found.__cause__
    return f"{type(exc).__name__}: {exc}"


def _describe(summary: RunSummary, work: Work) -> None:
    summary.base_version = work.base_version
    summary.items_listed = work.planned.sources.num_rows
    summary.items_unchanged = work.delta.unchanged if work.carry_over else 0
    summary.items_removed = work.delta.removed if work.carry_over else 0
    summary.new_generation = work.base is not None and not work.carry_over
    summary.items_in = work.to_process.num_rows


def _commit(
    sink: DatasetSink, record: dict[str, Any], work: Work, signing_key: Any = None
) -> Version:
    number = (work.base_version or 0) + 1
    try:
        touched = work.to_process["image_id"].combine_chunks()
        return commit_version(
            sink,
            record,
            work.base,
            work.delta,
            carry_over=work.carry_over,
            touched=touched,
            signing_key=signing_key,
        )
    except VersionConflict as exc:
        raise RunError(str(exc)) from None
    except Exception as exc:  # the store failed (retries exhausted) or the process is broken
        mine = read_record(sink.fs, sink.root, number)
        if mine is not None and mine.run_id == sink.run_id:
            _log.warning("version %s is committed; publishing its pointer failed: %s", number, exc)
            return mine
        raise RunError(
            f"commit to {sink.output.uri!r} failed and the new version is not committed "
            f"({type(exc).__name__}: {exc}); run again once the storage is healthy: it resumes"
        ) from exc


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
    items: pa.Table,
    sink: DatasetSink,
    address: str | None,
    progress: Progress | None,
    record: dict[str, Any],
    timings: dict[str, float],
    already_done: int = 0,
) -> None:
    from pipelines.ray_plan import execute, gpus_to_use, ray_session

    start = time.perf_counter()
    with ray_session(address) as ray_info:
        gpus = gpus_to_use(plan.manifest.compute.gpus_per_actor)
        record["ray"] = {"address": str(ray_info.get("address")), "gpus_per_actor": gpus}
        timings["ray_init"] = time.perf_counter() - start
        tables = execute(plan, items, gpus, record["ray"])
        try:
            timeline: list[tuple[float, int]] = []
            per_node = _stream(
                tables, sink, already_done, already_done + len(items), progress, timeline
            )
            record["timeline"] = _timeline(timeline, start)
        finally:
            # A failed run must not leave Ray's executor (and its actors holding the CPUs)
            # alive while its error is referenced: the next run in this process would wait
            # for those CPUs forever.
            tables.close()
        record["ray"]["nodes"] = len(per_node)
        record["ray"]["items_per_node"] = dict(sorted(per_node.items()))
        sink.flush()
    timings["execute"] = time.perf_counter() - start - timings["ray_init"]
    timings["index_write"] = sink.index_write_s  # part of execute, reported for target G10


def _stream(
    tables: Any,
    sink: DatasetSink,
    done: int,
    total: int,
    progress: Progress | None,
    timeline: list[tuple[float, int]],
) -> dict[str, int]:
    """Write every work table to the sink; return the items each Ray node processed.
    ``timeline`` gets (time, items done) as each table arrives."""
    from pipelines.ray_plan import NODE_COLUMN

    per_node = Counter[str]()
    for table in tables:
        sink.add(table.drop_columns([NODE_COLUMN]))
        # every item yields rows all in one batch: distinct ids in a batch are finished items
        counts = table.group_by(NODE_COLUMN).aggregate([("image_id", "count_distinct")])
        nodes, items = counts[NODE_COLUMN], counts["image_id_count_distinct"]
        for node, finished in zip(nodes.to_pylist(), items.to_pylist(), strict=True):
            per_node[node] += finished
            done += finished
        timeline.append((time.perf_counter(), done))
        if progress:
            progress(done, total)
    return dict(per_node)


TIMELINE_POINTS = 240  # enough for a plot; a run of millions of items keeps a small record


def _timeline(points: list[tuple[float, int]], start: float) -> dict[str, list[float]]:
    """Items done over seconds since the execute stage began (Ray start-up included), thinned
    evenly to at most TIMELINE_POINTS (the last point always kept)."""
    step = max(1, -(-len(points) // TIMELINE_POINTS))
    kept = points[::step]
    if points and kept[-1] is not points[-1]:
        kept.append(points[-1])
    return {
        "t_s": [round(t - start, 3) for t, _ in kept],
        "items_done": [float(n) for _, n in kept],
    }


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
        # what manifest_sha256 is the hash of: the fields that decide pixels and labels
        "recipe": loaded.manifest.recipe(),
        "code_version": code_version(),
        "environment": environment(),
    }
