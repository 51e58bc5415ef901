"""Every row of the reliability matrix (RELIABILITY.md) has at least one test guarding it."""

from __future__ import annotations

from pathlib import Path

from matrix import ROWS, collect_rows

ROOT = Path(__file__).resolve().parent.parent
GPU_ONLY = {"D4"}  # checked only where a GPU is lent


def test_every_matrix_row_has_a_test():
    rows, code, output = collect_rows(str(ROOT), "tests")
    assert rows, f"collection failed (exit {code}):\n{output}"
    unknown = sorted(set(rows) - set(ROWS))
    missing = sorted(set(ROWS) - GPU_ONLY - set(rows))
    assert unknown == [], f"tests marked for rows that tests/matrix.py does not know: {unknown}"
    assert missing == [], f"matrix rows without a test: {missing}"
