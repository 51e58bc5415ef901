"""Poison, hung and failing items, a killed actor and a constructor that always dies: real
processes dying on real items.

Each run is a `pipeline run` subprocess with its own Ray, so the fault plan
(SYNTHFILL_FAULTS, pipelines/faults.py) reaches the workers that process the items. Six images
in blocks of three, batches of two: img_000+img_001, img_002 | img_003+img_004, img_005.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, manifest_text, pipeline_cli, write_images

from pipelines.versions import index_digest

pytestmark = pytest.mark.slow
ITEMS = 6
COMPUTE = (
    "compute: {actors: 2, batch_size: 2, max_error_rate: 0.5, item_timeout_s: %s, "
    "max_item_attempts: 2}"
)
RUN_LIMIT_S = 150  # a run that has not ended by then is one Ray would retry forever


def write_manifest(tmp: Path, name: str, timeout_s: float) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(manifest_text(tmp / "images", tmp / name, compute=COMPUTE % timeout_s))
    return path


def run_with(tmp: Path, name: str, faults: str = "", timeout_s: float = 60) -> dict:
    """One run over the shared images; returns the summary, run record and committed index."""
    path = write_manifest(tmp, name, timeout_s)
    start = time.monotonic()
    env = {"SYNTHFILL_FAULTS": faults} if faults else {}
    code, summary, stderr = pipeline_cli(str(path), env=env, timeout=RUN_LIMIT_S)
    wall = time.monotonic() - start
    assert code == 0, stderr[-3000:]
    out = tmp / name
    index = pq.read_table(out / "index.parquet")
    return {
        "summary": summary,
        "supervision": json.loads((out / "run.json").read_text())["ray"]["supervision"],
        "index": index,
        "quarantine": pq.read_table(out / "quarantine.parquet").to_pylist(),
        "wall": wall,
        "digest": index_digest(index, out.as_uri()),
        "root": out.as_uri(),
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("poison")
    write_images(tmp / "images", ITEMS)
    return tmp


@pytest.fixture(scope="module")
def clean(images) -> dict:
    return run_with(images, "clean")


def others_untouched(result: dict, clean: dict, poisoned: str) -> bool:
    """Every other item's rows equal the clean run's (digest over rows and output bytes)."""

    def without(table):
        return table.filter(pc.not_equal(table["image_id"], poisoned))

    mine, theirs = without(result["index"]), without(clean["index"])
    return index_digest(mine, result["root"]) == index_digest(theirs, clean["root"])


def conservation(result: dict) -> dict:
    s = result["summary"]
    index = result["index"]
    pairs = list(zip(index["image_id"].to_pylist(), index["variant"].to_pylist(), strict=True))
    assert s["items_in"] == s["items_ok"] + s["items_quarantined"]
    return {
        "items_in": s["items_in"],
        "items_ok": s["items_ok"],
        "items_quarantined": s["items_quarantined"],
        "duplicates": len(pairs) - len(set(pairs)),
        "wall_s": round(result["wall"], 1),
        "supervision": result["supervision"],
    }


def quarantined(result: dict) -> list[tuple[str, str]]:
    return [(q["image_id"], q["reason"]) for q in result["quarantine"]]


@pytest.mark.matrix("P2")
def test_an_item_that_kills_its_worker_every_time_is_quarantined(images, clean, matrix):
    # img_001 shares its batch with img_000: the batch retry must keep img_000
    result = run_with(images, "poison", "item:img_001.png=exit")
    figures = conservation(result)
    assert quarantined(result) == [("img_001.png", "worker_crash")]
    assert figures["items_ok"] == ITEMS - 1 and figures["duplicates"] == 0
    assert others_untouched(result, clean, "img_001.png")
    assert figures["supervision"]["worker_crash"] == 1
    matrix.record(**figures, reason=result["quarantine"][0]["error"])


@pytest.mark.matrix("P3")
def test_an_item_that_hangs_is_quarantined_after_its_time_limit(images, clean, matrix):
    limit = 4.0
    result = run_with(images, "hang", "item:img_001.png=hang", timeout_s=limit)
    figures = conservation(result)
    assert quarantined(result) == [("img_001.png", "timeout")]
    assert others_untouched(result, clean, "img_001.png")
    stats = figures["supervision"]
    # From the hung item's solo start: the watchdog fires at the limit plus its 0.2 s poll;
    # the quarantine row follows once Ray has restarted the actor and retried the batch.
    watchdog_eps = stats["watchdog_fired_s"] - limit
    quarantine_eps = stats["timeout_verdict_s"] - limit
    assert 0 <= watchdog_eps < 2.0, stats
    assert 0 <= quarantine_eps < 30.0, stats
    assert stats["actor_restarts"] >= 2, stats  # the batch's limit, then the item's own
    matrix.record(
        **figures,
        item_timeout_s=limit,
        watchdog_epsilon_s=round(watchdog_eps, 2),
        quarantine_epsilon_s=round(quarantine_eps, 2),
        extra_wall_s=round(result["wall"] - clean["wall"], 1),
    )


@pytest.mark.matrix("P1")
def test_an_actor_killed_once_mid_batch_leaves_every_output_exactly_once(
    images, clean, matrix, tmp_path
):
    marker = tmp_path / "killed-once"  # img_004 is the second item of its batch
    result = run_with(images, "killed", f"item:img_004.png=exit-once:{marker}")
    figures = conservation(result)
    assert marker.exists()  # the actor did die
    assert figures["items_quarantined"] == 0 and figures["duplicates"] == 0
    assert result["digest"] == clean["digest"]  # the same index, row for row
    stats = figures["supervision"]
    assert stats.get("actor_restarts", 0) >= 1 and stats.get("retried_batches", 0) >= 1
    matrix.record(**figures, restarts=stats["actor_restarts"], digest_equal=True)


@pytest.mark.matrix("P4")
def test_an_exception_on_one_item_costs_only_that_item(images, clean, matrix):
    result = run_with(images, "raises", "item:img_004.png=raise")
    figures = conservation(result)
    assert quarantined(result) == [("img_004.png", "unexpected_error")]
    assert figures["items_ok"] == ITEMS - 1  # its batch-mate was kept: no block dropped
    assert others_untouched(result, clean, "img_004.png")
    matrix.record(**figures)


@pytest.mark.matrix("P2")
def test_a_constructor_that_always_dies_ends_the_run_with_a_clear_error(images, matrix):
    path = write_manifest(images, "no-start", 60)
    start = time.monotonic()
    code, _, stderr = pipeline_cli(
        str(path), env={"SYNTHFILL_FAULTS": "actor:start=exit"}, timeout=RUN_LIMIT_S
    )
    wall = time.monotonic() - start
    assert code != 0
    assert "died" in stderr and "times in a row while starting" in stderr, stderr[-3000:]
    assert not (images / "no-start" / "_COMMITTED").exists()
    matrix.record(exit_code=code, wall_s=round(wall, 1), committed=False)


SPILLING = """
import json, logging, sys
import numpy as np
import ray

ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False,
         logging_level=logging.ERROR, log_to_driver=False)
# 90 MiB of ballast in a 100 MiB store: every block the run adds pushes something to disk
ballast = [ray.put(np.zeros(30 * 2**20, np.uint8)) for _ in range(3)]
from pipelines.manifest_loader import load_manifest
from pipelines.run import run_manifest
from ray._private.internal_api import memory_summary

summary = run_manifest(load_manifest(sys.argv[1]))
address = ray.get_runtime_context().gcs_address  # this run's Ray, not any other on the machine
memory = memory_summary(address=address, stats_only=True)
print(json.dumps({"summary": summary.as_dict(), "memory": memory}))
"""


@pytest.mark.matrix("P8")
def test_a_run_under_object_store_pressure_spills_and_gives_the_same_index(images, clean, matrix):
    path = images / "spilling.yaml"
    compute = "compute: {actors: 2, batch_size: 1, max_error_rate: 0.0}"  # a block per item
    path.write_text(manifest_text(images / "images", images / "spilling", compute=compute))
    own_ray = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never the session's
    done = subprocess.run(
        [sys.executable, "-c", SPILLING, str(path)],
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT_S,
        cwd=ROOT,
        env=own_ray,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.find("{") :])
    spilled = re.search(r"Spilled (\d+) MiB, (\d+) objects", report["memory"])
    assert spilled and int(spilled.group(1)) > 0, report["memory"]
    out = images / "spilling"
    index = pq.read_table(out / "index.parquet")
    assert index_digest(index, out.as_uri()) == clean["digest"]
    s = report["summary"]
    matrix.record(
        items_in=s["items_in"],
        items_ok=s["items_ok"],
        items_quarantined=s["items_quarantined"],
        duplicates=0,
        spilled_mib=int(spilled.group(1)),
        spilled_objects=int(spilled.group(2)),
        object_store_mib=100,
        digest_equal=True,
    )
