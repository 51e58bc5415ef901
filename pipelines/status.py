"""What a dataset holds and what a run would do next (``pipeline status``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pipelines import versions
from pipelines.manifest import OutputSpec
from pipelines.manifest_loader import LoadedManifest
from pipelines.sink import DatasetSink


def dataset_status(output: OutputSpec) -> dict[str, Any]:
    """Committed versions, the pointer's state and interrupted runs of the dataset at ``output``.

    Reads only: a pointer left behind by a crash is reported, not repaired.
    """
    sink = DatasetSink(output, "status")
    latest = sink.check_target(repair=False)
    pointer = versions.read_pointer(sink.fs, sink.root)
    kept = versions.all_versions(sink.fs, sink.root)
    if not kept and pointer is not None:  # written before datasets had versions
        kept = [pointer]
    return {
        "uri": output.uri,
        "latest": latest.version if latest else None,
        "pointer": pointer.version if pointer else None,
        "versions": [asdict(v) for v in kept],
        "interrupted": sink.interrupted(),
    }


def pending_status(loaded: LoadedManifest) -> dict[str, Any]:
    """What ``pipeline run`` of this manifest would process now (lists the sources)."""
    from pipelines.planning import plan_work

    sink = DatasetSink(loaded.manifest.output, "status")
    work = plan_work(loaded, sink, repair=False)
    return {**work.describe(), "resumes": work.resumes, "manifest_sha256": loaded.fingerprint}
