"""Orchestration: manifests, seeding, sources, the Ray plan, sinks and provenance.

``from pipelines import read_dataset`` reads a committed dataset's index (see reader.py).
"""

from __future__ import annotations

from typing import Any

__all__ = ["read_dataset"]


def __getattr__(name: str) -> Any:
    # Imported on first use: importing ``pipelines`` stays free (workers import it a lot).
    if name == "read_dataset":
        from pipelines.reader import read_dataset

        return read_dataset
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
