"""The reliability matrix (RELIABILITY.md): run every test guarding a row, print one JSON table.

Each test marked ``@pytest.mark.matrix(ROW)`` injects its fault for real (a corrupt file, a
hostile manifest, a killed process, a fault proxy in front of S3) and reports the row's figures.
This runs them in a pytest subprocess and prints, per row (P, S, I, C, D order), its tests with
outcome, seconds and figures, and a summary: rows passed, failed, and missing (rows of
``tests/matrix.py`` that no test guards).

    python benchmarks/reliability.py              # every marked test (a few minutes on 2 cores)
    python benchmarks/reliability.py --fast       # leave out the slow (whole-pipeline) ones
    python benchmarks/reliability.py -- -k I3     # extra arguments go to pytest
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from matrix import OUT_ENV, ROWS, collect_rows  # noqa: E402

ORDER = "PSICD"
GPU_ONLY = {"D4": "GPU vs CPU within tolerance (only where a GPU is lent)"}


def row_order(row: str) -> tuple[int, int]:
    return ORDER.index(row[0]) if row[0] in ORDER else len(ORDER), int(row[1:] or 0)


def run_marked(marker: str, extra: list[str]) -> tuple[list[dict[str, Any]], int, float, str]:
    """Run the marked tests; their report lines, pytest's exit code, seconds and output tail."""
    with tempfile.TemporaryDirectory(prefix="matrix-") as folder:
        lines = Path(folder) / "matrix.jsonl"
        env = {**os.environ, OUT_ENV: str(lines)}
        # Ray's socket paths must fit 107 bytes: a short folder of its own, unless one is set.
        env.setdefault("RAY_TMPDIR", folder)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker]
        start = time.perf_counter()
        done = subprocess.run(
            [*command, *extra, "tests"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        text = lines.read_text() if lines.exists() else ""
    reports = [json.loads(line) for line in text.splitlines() if line.strip()]
    return reports, done.returncode, seconds, (done.stdout + done.stderr)[-3000:]


def row_status(outcomes: list[str]) -> str:
    if not outcomes:
        return "missing"
    if any(o not in ("passed", "skipped") for o in outcomes):
        return "failed"
    return "skipped" if all(o == "skipped" for o in outcomes) else "passed"


def table(reports: list[dict[str, Any]], collected: dict[str, list[str]]) -> dict[str, Any]:
    """Per row: title, status, and each test's outcome, seconds and figures."""
    rows: dict[str, Any] = {}
    titles = {**ROWS, **GPU_ONLY}
    for row in sorted(set(titles) | {r["row"] for r in reports}, key=row_order):
        mine = [r for r in reports if r["row"] == row]
        tests = [
            {k: r[k] for k in ("test", "outcome", "seconds", "figures")}
            for r in sorted(mine, key=lambda r: r["test"])
        ]
        not_run = sorted(set(collected.get(row, [])) - {t["test"] for t in tests})
        rows[row] = {
            "title": titles.get(row, "(not in tests/matrix.py)"),
            "status": row_status([t["outcome"] for t in tests]),
            "tests": tests,
        }
        if not_run:
            rows[row]["collected_not_run"] = not_run
        if not tests and collected.get(row):
            rows[row]["status"] = "not_run"  # guarded, but left out (--fast, -k)
        elif row in GPU_ONLY and not tests:
            rows[row]["status"] = "not_applicable"
    return rows


def summary(rows: dict[str, Any]) -> dict[str, Any]:
    counts = Counter(r["status"] for r in rows.values())
    return {
        "rows": len(rows),
        "passed": counts["passed"],
        "failed": counts["failed"],
        "missing": counts["missing"],
        "skipped": counts["skipped"],
        "not_run": counts["not_run"],
        "not_applicable": counts["not_applicable"],
        "failed_rows": [k for k, r in rows.items() if r["status"] == "failed"],
        "missing_rows": [k for k, r in rows.items() if r["status"] == "missing"],
        "tests": sum(len(r["tests"]) for r in rows.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="leave out tests marked slow")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args()
    marker = "matrix and not slow" if args.fast else "matrix"
    collected, collect_code, collect_output = collect_rows(str(ROOT), "tests")
    reports, code, seconds, output = run_marked(marker, args.pytest_args)
    rows = table(reports, collected)
    document: dict[str, Any] = {
        "summary": summary(rows),
        "rows": rows,
        "pytest": {"marker": marker, "exit_code": code, "seconds": round(seconds, 1)},
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
    }
    if code not in (0, 1):  # 1: some test failed (in the table); anything else: pytest broke
        document["pytest"]["output_tail"] = output
    if collect_code != 0:
        document["pytest"]["collection_output_tail"] = collect_output
    print(json.dumps(document, indent=2, default=str))


if __name__ == "__main__":
    main()
