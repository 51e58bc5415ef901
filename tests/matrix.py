"""The reliability matrix (RELIABILITY.md): which rows exist, and how tests report figures.

A test guarding a row is marked ``@pytest.mark.matrix("P2")`` and reports the row's figures
through the ``matrix`` fixture: ``matrix.record(items_in=..., items_ok=..., ...)``. With
``SYNTHFILL_MATRIX_OUT`` set, every marked test appends one JSON line (row, test, outcome,
figures) to that file; ``benchmarks/reliability.py`` runs the marked tests and prints the table.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

OUT_ENV = "SYNTHFILL_MATRIX_OUT"

ROWS = {
    "P1": "inpainting actor killed mid-batch",
    "P2": "poison item kills its worker every time",
    "P3": "item hangs",
    "P4": "application exception on one item",
    "P5": "driver SIGKILL at a random point, then re-run",
    "P6": "driver killed at each commit step",
    "P7": "two runs of one manifest at once",
    "P8": "object-store memory pressure / spilling",
    "P9": "re-write into a non-empty output",
    "S4": "exception during upload of an output",
    "S5": "crash during a multipart upload",
    "S6": "source changed or deleted between plan and read",
    "S7": "credentials expired / 403 mid-run",
    "S8": "output key already exists with other bytes",
    "I1": "zero-byte object",
    "I2": "non-image / wrong extension / disallowed format",
    "I3": "truncated JPEG/PNG",
    "I4": "decompression bomb",
    "I5": "legit huge aerial tile above budget",
    "I6": "16-bit grayscale and MONOCHROME1 X-ray",
    "I7": "EXIF orientation 1-8",
    "I8": "CMYK, palette+transparency, LA, 1-bit",
    "I9": "fuzzed / malformed bytes",
    "C1": "YAML with !!python tags",
    "C2": "YAML alias bomb / oversize / duplicate keys / type traps",
    "C3": "path traversal in item ids",
    "C4": "template attribute/index access",
    "C5": "malicious pickle weights",
    "C6": "credential canary",
    "C7": "PHI canaries in DICOM",
    "D1": "worker counts / batch sizes do not change outputs",
    "D2": "resumed items bit-identical to a full run",
    "D3": "the seed flows",
}
# The figures every row reports where they apply (RELIABILITY.md, "conservation figure").
CONSERVATION = ("items_in", "items_ok", "items_quarantined", "duplicates", "canary_hits")


class MatrixFigures:
    """Collects one test's figures for its matrix row."""

    def __init__(self, node: pytest.Item, row: str) -> None:
        self.node, self.row = node, row

    def record(self, **figures: Any) -> None:
        """Add figures (JSON-serialisable) to this test's report; later calls add to earlier."""
        self.node.user_properties.append(("matrix", figures))


def matrix_rows(item: pytest.Item) -> list[str]:
    return [mark.args[0] for mark in item.iter_markers("matrix")]


def write_report(item: pytest.Item, outcome: str, duration: float) -> None:
    """Append this test's line to SYNTHFILL_MATRIX_OUT (no-op when unset or unmarked)."""
    path = os.environ.get(OUT_ENV)
    if not path:
        return
    figures: dict[str, Any] = {}
    for name, value in item.user_properties:
        if name == "matrix":
            figures.update(value)
    with open(path, "a", encoding="utf-8") as out:
        for row in matrix_rows(item):
            line = {"row": row, "test": item.nodeid, "outcome": outcome, "seconds": duration}
            out.write(json.dumps({**line, "figures": figures}, default=str) + "\n")


_COLLECT = """
import json, sys
import pytest

class Rows:
    def pytest_collection_finish(self, session):
        found = {}
        for item in session.items:
            for mark in item.iter_markers("matrix"):
                found.setdefault(str(mark.args[0]), []).append(item.nodeid)
        print("MATRIX-ROWS " + json.dumps(found, sort_keys=True), flush=True)

args = ["--collect-only", "-q", "-p", "no:cacheprovider", "-m", "matrix", *sys.argv[1:]]
sys.exit(pytest.main(args, plugins=[Rows()]))
"""


def collect_rows(root: str, *paths: str) -> tuple[dict[str, list[str]], int, str]:
    """Which tests guard which row: ``pytest --collect-only -m matrix`` in a subprocess.

    Returns (row -> node ids, pytest's exit code, its output when the rows could not be read).
    """
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _COLLECT, *(paths or ("tests",))],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    for line in done.stdout.splitlines():
        if line.startswith("MATRIX-ROWS "):
            return json.loads(line.removeprefix("MATRIX-ROWS ")), done.returncode, ""
    return {}, done.returncode, (done.stdout + done.stderr)[-4000:]
