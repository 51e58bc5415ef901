"""Driver-side costs of a large run, per 10,000 items, extrapolated to 100 M images a night.

Simulates a big source with tiny images (16x16 PNGs in 256 folders, the cheapest fill: telea
radius 1, one box, 1 variant) so the per-item compute is small and the driver's own costs show:

* driver memory (RSS of this process, sampled every 50 ms) while the plan is built and during
  the whole real run, and the plan's memory in the old shape (a dict per item handed to
  ``ray.data.from_items``) next to the new one (an Arrow table handed to ``from_arrow``);
* listing time: the folder listed vs the same keys read from inventory files (GCS-style CSV,
  Parquet, an S3 Inventory manifest with gzip'd URL-encoded CSV), and an S3 bucket on moto
  listed serially vs per prefix in parallel;
* commit time into an empty output and over an existing dataset, whose cleanup lists images/
  and masks/ for unreferenced files.

Prints one JSON document and writes it to benchmarks/results/scale.json.

    python benchmarks/scale.py [--items 100000] [--s3-keys 5000]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote_plus

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipelines.manifest import SourceSpec  # noqa: E402
from pipelines.sources import source_table  # noqa: E402

NIGHT = 100_000_000  # images a night (DESIGN.md, "Toward internet scale")
PER = 10_000  # figures are given per this many items
BATCH = 256  # items per actor call: tiny items need big batches to carry >= 0.3 s of work
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"


def rss_mb() -> dict[str, float]:
    """This process's resident memory (MB): total, private (anon) and shared (object store)."""
    wanted = {"VmRSS": "rss", "RssAnon": "anon", "RssShmem": "shmem"}
    out = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in wanted:
                out[wanted[key]] = int(value.split()[0]) / 1024
    return out


class PeakRss:
    """Samples rss_mb() in a thread; ``peak`` holds the largest value of each field seen."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.every_s, self.peak = every_s, rss_mb()
        self.series: list[tuple[float, float]] = []  # (seconds since start, rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            now = rss_mb()
            self.series.append((time.perf_counter() - self._start, now["rss"]))
            for key, value in now.items():
                self.peak[key] = max(self.peak[key], value)

    def peak_rss(self, start_s: float, end_s: float = math.inf) -> float:
        """The largest rss sampled between two times (seconds since the start)."""
        return max((rss for t, rss in self.series if start_s <= t < end_s), default=0.0)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for key, value in rss_mb().items():
            self.peak[key] = max(self.peak[key], value)


def make_source(folder: Path, items: int) -> list[Path]:
    """``items`` tiny PNGs in 256 sub-folders (as hashed prefixes spread a bucket)."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    paths = []
    for i in range(items):
        path = folder / f"{i % 256:02x}" / f"img_{i:07d}.png"
        if i < 256:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def write_inventories(paths: list[Path], folder: Path) -> dict[str, Path]:
    """The same keys as a GCS-style CSV, a Parquet table and an S3 Inventory manifest (CSV)."""
    folder.mkdir(parents=True)
    size = paths[0].stat().st_size
    keys = [str(p) for p in paths]
    csv_path, parquet_path = folder / "keys.csv.gz", folder / "keys.parquet"
    text = "name,size\n" + "".join(f"{k},{size}\n" for k in keys)
    csv_path.write_bytes(gzip.compress(text.encode(), compresslevel=1))
    # change tokens as an inventory carries them (not plain md5s, which reads would check)
    etags = [f"{i:08x}-1" for i in range(len(keys))]
    pq.write_table(pa.table({"key": keys, "size": [size] * len(keys), "etag": etags}), parquet_path)
    tenth = len(keys) // 10
    small = pa.table({"key": keys[:tenth], "size": [size] * tenth, "etag": etags[:tenth]})
    pq.write_table(small, folder / "keys_tenth.parquet")
    data = folder / "s3/data/part-0.csv.gz"
    data.parent.mkdir(parents=True)
    rows = "".join(f'"local","{quote_plus(k, safe="/")}","{size}","{"0" * 32}"\n' for k in keys)
    data.write_bytes(gzip.compress(rows.encode(), compresslevel=1))
    manifest = folder / "s3/2026-11-22T00-00Z/manifest.json"
    manifest.parent.mkdir()
    doc = {"fileFormat": "CSV", "fileSchema": "Bucket, Key, Size, ETag", "files": []}
    doc["files"].append({"key": "data/part-0.csv.gz", "size": 1, "MD5checksum": "0" * 32})
    manifest.write_text(json.dumps(doc))
    return {
        "inventory_csv_gz": csv_path,
        "inventory_parquet": parquet_path,
        "s3_inventory_manifest_csv_gz": manifest,
    }


def timed_listing(spec: SourceSpec, repeats: int = 3, **kwargs: bool) -> tuple[float, int]:
    """Median seconds of source_table(spec) and the items it found."""
    times, rows = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        table, _ = source_table(spec, **kwargs)
        times.append(time.perf_counter() - start)
        rows = table.num_rows
    return statistics.median(times), rows


def listing_figures(source: Path, inventories: dict[str, Path], items: int) -> dict[str, float]:
    out = {}
    for name, inventory in {"folder_listing": None, **inventories}.items():
        spec = SourceSpec(uri=str(source), inventory=str(inventory) if inventory else None)
        seconds, rows = timed_listing(spec)
        assert rows == items, (name, rows)
        out[name] = round(seconds / items * PER, 3)
    return out


def s3_listing_figures(keys: int, prefixes: int = 16) -> dict[str, float | int]:
    """Serial vs per-prefix parallel listing of ``keys`` objects on moto (loopback, one process)."""
    from s3_servers import MotoS3

    saved = dict(os.environ)
    with MotoS3(buckets=["scale"]) as s3:
        os.environ.update(s3.env())
        client = s3.client()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: _put(client, i, prefixes), range(keys)))
        spec = SourceSpec(uri="s3://scale/root", storage_options={"endpoint_url": s3.endpoint_url})
        serial, rows = timed_listing(spec, parallel=False)
        parallel, rows_parallel = timed_listing(spec, parallel=True)
    os.environ.clear()
    os.environ.update(saved)
    assert rows == rows_parallel == keys
    return {
        "keys": keys,
        "prefixes": prefixes,
        "serial_s_per_10k": round(serial / keys * PER, 3),
        "parallel_s_per_10k": round(parallel / keys * PER, 3),
        "parallel_speedup": round(serial / parallel, 2),
    }


def _put(client, i: int, prefixes: int) -> None:
    client.put_object(Bucket="scale", Key=f"root/{i % prefixes:02x}/img_{i:07d}.png", Body=b"x")


def plan_memory(inventory: Path, source: Path, shape: str, batch: int) -> dict[str, float]:
    """Driver memory (MB) of the plan of ``inventory``'s items handed to Ray, in one shape.

    Run in a fresh process. ``dicts`` rebuilds the previous plan: a SourceItem per image
    (PlannedRun.items), a dict per item (work_items) and ``from_items`` with a block per batch;
    ``arrow`` is the current one: the item table, ``from_arrow`` in blocks of ``block_rows``.
    """
    import ray
    import ray.data  # noqa: F401 (imported before the baseline: its import is a fixed cost)

    from pipelines.planning import PlannedRun, work_items, work_table
    from pipelines.ray_plan import block_rows

    ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.WARNING)
    before = rss_mb()
    with PeakRss() as peak:
        start = time.perf_counter()
        sources, _ = source_table(SourceSpec(uri=str(source), inventory=str(inventory)))
        planned, items = PlannedRun(sources, {}, 0, 0, sources.num_rows), sources.num_rows
        if shape == "dicts":
            objects, payload = planned.items, work_items(planned)
            blocks = max(math.ceil(items / batch), 2)
            dataset = ray.data.from_items(payload, override_num_blocks=blocks)
        else:
            objects, table = None, work_table(planned)
            rows = block_rows(items, batch, 2)
            blocks = math.ceil(items / rows)
            dataset = ray.data.from_arrow([table.slice(i * rows, rows) for i in range(blocks)])
        seconds = time.perf_counter() - start
    held = rss_mb()
    assert dataset is not None and (objects is None or len(objects) == items)
    ray.shutdown()
    return {
        "items": items,
        "blocks": blocks,
        "plan_s": seconds,
        "held_anon_mb": held["anon"] - before["anon"],
        "peak_rss_mb": peak.peak["rss"] - before["rss"],
        "shmem_mb": held["shmem"] - before["shmem"],
    }


def plan_memory_slope(inventories: tuple[Path, Path], source: Path, shape: str, batch: int):
    """Per 10k items: the difference between a plan of N items and one of N/10 (fixed costs out)."""
    big, small = (_plan_memory_child(i, source, shape, batch) for i in inventories)
    scale = PER / (big["items"] - small["items"])
    out = {"blocks": big["blocks"]}
    for key in ("plan_s", "held_anon_mb", "peak_rss_mb", "shmem_mb"):
        out[f"{key}_per_10k"] = round((big[key] - small[key]) * scale, 3)
    return out


def _plan_memory_child(inventory: Path, source: Path, shape: str, batch: int) -> dict:
    command = [sys.executable, __file__, "--plan-memory", shape, "--batch", str(batch)]
    command += ["--inventory", str(inventory), "--source", str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


MANIFEST = """name: scale
seed: 1
variants: 1
source: {{uri: "{source}", inventory: "{inventory}"}}
masks: [{{kind: boxes, count: [1, 1], size: [0.2, 0.3]}}]
inpainter: {{kind: telea, radius: 1}}
output: {{uri: "{output}", format: png, png_level: 1}}
compute: {{actors: 2, batch_size: {batch}, max_error_rate: 0}}
"""


def one_run(
    work: Path,
    source: Path,
    inventory: Path,
    name: str,
    limit: int | None = None,
    overwrite: bool = False,
) -> dict:
    """The real pipeline over the inventory's items, this process's memory sampled throughout."""
    from pipelines.manifest_loader import load_manifest
    from pipelines.run import run_manifest

    path, output = work / f"{name}.yaml", work / name
    text = MANIFEST.format(source=source, inventory=inventory, output=output, batch=BATCH)
    path.write_text(text)
    before = rss_mb()
    sets = ["output.overwrite=true"] if overwrite else []
    with PeakRss() as peak:
        summary = run_manifest(load_manifest(path, sets), limit=limit)
    assert summary.status in ("committed", "up_to_date"), summary.message
    growth = {key: peak.peak[key] - before[key] for key in ("rss", "anon")}
    # the summary's wall time stops where the commit starts
    growth["until_commit"] = peak.peak_rss(0, summary.wall_s) - before["rss"]
    growth["commit"] = peak.peak_rss(summary.wall_s) - before["rss"]
    return {"summary": summary, "output": output, "before": before["rss"]} | growth


def run_figures(work: Path, source: Path, inventories: tuple[Path, Path], items: int) -> dict:
    """A warm-up run, then N/10 and N items: driver memory per 10k items is their difference."""
    import ray

    from pipelines.ray_plan import THREAD_PINS

    ray.init(
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        object_store_memory=1 << 30,
        runtime_env={"env_vars": dict(THREAD_PINS)},
    )
    one_run(work, source, inventories[1], "warm-up", limit=BATCH)  # imports, Ray Data set-up
    small = one_run(work, source, inventories[1], "small")
    big = one_run(work, source, inventories[0], "big")
    # The next night with no new source: listing and comparing with version 1, nothing else.
    quiet = one_run(work, source, inventories[0], "big")
    assert quiet["summary"].status == "up_to_date", quiet["summary"].message
    # A rebuild (--overwrite, or a changed recipe): every item again, a new version.
    again = one_run(work, source, inventories[0], "big", overwrite=True)
    ray.shutdown()
    scale = PER / (big["summary"].items_in - small["summary"].items_in)
    assert big["summary"].items_ok == items
    return {
        "summary": big["summary"],
        "output": big["output"],
        "driver_rss_mb_before": round(big["before"], 1),
        "driver_rss_mb_peak": round(big["before"] + big["rss"], 1),
        "driver_peak_growth_mb_per_10k": round((big["rss"] - small["rss"]) * scale, 3),
        "driver_anon_peak_growth_mb_per_10k": round((big["anon"] - small["anon"]) * scale, 3),
        "until_commit_peak_growth_mb_per_10k": round(
            (big["until_commit"] - small["until_commit"]) * scale, 3
        ),
        "commit_peak_growth_mb_per_10k": round((big["commit"] - small["commit"]) * scale, 3),
        "up_to_date_night_s": quiet["summary"].wall_s,
        "overwrite_commit_s": again["summary"].timings_s["commit"],
        "overwrite_commit_peak_growth_mb_per_10k": round(
            (again["commit"] - small["commit"]) * scale, 3
        ),
    }


def commit_figures(run: dict, items: int) -> dict[str, float]:
    """Commit time into an empty output and of a rebuild over a committed dataset (version 2:
    its index written, no listing), a quiet night's whole wall time, and what listing every
    output (the sweep after an abandoned run) costs."""
    import fsspec

    fs = fsspec.filesystem("file")
    start = time.perf_counter()
    found = sum(len(fs.find(str(run["output"] / folder))) for folder in ("images", "masks"))
    listing = time.perf_counter() - start
    commit, again = run["summary"].timings_s["commit"], run.pop("overwrite_commit_s")
    quiet = run.pop("up_to_date_night_s")
    return {
        "up_to_date_night_s": quiet,
        "up_to_date_night_s_per_10k": round(quiet / items * PER, 3),
        "fresh_output_commit_s": commit,
        "fresh_output_commit_s_per_10k": round(commit / items * PER, 4),
        "overwrite_commit_s": again,
        "overwrite_commit_s_per_10k": round(again / items * PER, 3),
        "outputs_listed": found,
        "outputs_listing_s_per_10k": round(listing / items * PER, 3),
        "full_sweep_listing_s": round(listing, 3),
    }


def extrapolate(memory: dict, run: dict, listing: dict, s3: dict | None, commit: dict) -> dict:
    """Linear extrapolation of the per-10k figures to one night of NIGHT images (1 variant)."""
    k = NIGHT / PER
    gb, hours = k / 1024, k / 3600
    out = {
        "images": NIGHT,
        "driver_plan_peak_gb": {
            name: round(m["peak_rss_mb_per_10k"] * gb, 1) for name, m in memory.items()
        },
        "driver_run_peak_growth_gb": round(run["driver_peak_growth_mb_per_10k"] * gb, 1),
        "driver_until_commit_peak_growth_gb": round(
            run["until_commit_peak_growth_mb_per_10k"] * gb, 1
        ),
        "listing_hours": {name: round(s * hours, 2) for name, s in listing.items()},
        "fresh_output_commit_hours": round(commit["fresh_output_commit_s_per_10k"] * hours, 3),
        "overwrite_commit_hours": round(commit["overwrite_commit_s_per_10k"] * hours, 2),
        "up_to_date_night_hours": round(commit["up_to_date_night_s_per_10k"] * hours, 2),
        "full_sweep_outputs_listed": 2 * NIGHT,
        "full_sweep_list_requests_on_object_store": 2 * NIGHT // 1000,
        "s3_list_requests_serial": NIGHT // 1000,
    }
    if s3:
        out["s3_listing_hours_moto"] = {
            "serial": round(s3["serial_s_per_10k"] * hours, 2),
            "parallel": round(s3["parallel_s_per_10k"] * hours, 2),
        }
        # a full sweep lists 2 outputs per image, serially, at the same rate
        out["full_sweep_listing_hours_at_moto_rate"] = round(2 * s3["serial_s_per_10k"] * hours, 2)
    return out


NOTES = [
    "Driver memory per 10k items is the difference between a plan (or run) of N and one of N/10 "
    "items, so fixed costs (imports, Ray start-up) cancel; 100 M figures multiply it by 10,000.",
    "Driver memory is this process's RSS, sampled every 50 ms; 'shmem' is the object-store copy "
    "of the plan that the driver wrote (Ray's shared memory, counted in its RSS).",
    "dicts_* rebuild the previous plan (SourceItem + a dict per item + from_items with a block "
    "per batch); arrow_* are the current one (an Arrow table, from_arrow, <= 1,024 items a block).",
    "Folder and inventory listings read this machine's disk; on S3 a listing costs one request "
    "per 1,000 keys, which moto serves from the same 2 cores as the client (no network latency), "
    "so moto understates what per-prefix parallel listing saves on a real bucket.",
    "A commit writes the version's index (kept rows + new rows) and lists no outputs unless "
    "leftovers are possible: after quarantines or a resume only the touched shards are listed, "
    "and every file under images/ and masks/ only after an abandoned run (its writes are not "
    "known): full_sweep_* is that cost, 2 LIST requests per 1,000 outputs on an object store. "
    "Outputs only a dropped version pointed to are deleted by key, without listing.",
    "A quiet night (no new or changed source) lists the sources, compares them with the latest "
    "version's change tokens and exits up_to_date.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000, help="source images (1 variant)")
    parser.add_argument("--s3-keys", type=int, default=5_000, help="keys on moto; 0 skips S3")
    parser.add_argument("--plan-memory", choices=["dicts", "arrow"], help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--inventory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plan_memory:  # the child process of plan_memory_slope
        figures = plan_memory(Path(args.inventory), Path(args.source), args.plan_memory, args.batch)
        print(json.dumps(figures))
        return
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="synthfill-scale-"))
    try:
        paths = make_source(work / "source", args.items)
        inventories = write_inventories(paths, work / "inventory")
        listing = listing_figures(work / "source", inventories, args.items)
        pair = (inventories["inventory_parquet"], work / "inventory" / "keys_tenth.parquet")
        memory = {
            f"{shape}_batch{batch}": plan_memory_slope(pair, work / "source", shape, batch)
            for shape in ("dicts", "arrow")
            for batch in (4, BATCH)
        }
        s3 = s3_listing_figures(args.s3_keys) if args.s3_keys else None
        run = run_figures(work, work / "source", pair, args.items)
        commit = commit_figures(run, args.items)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = run.pop("summary")
    run.pop("output")
    result = {
        "workload": {
            "items": args.items,
            "image": "16x16 RGB PNG, 256 folders",
            "manifest": f"boxes x1 + telea r1, 1 variant, png out, 2 actors, batch {BATCH}",
            "run_source": "source.inventory (Parquet)",
            "cores": os.cpu_count(),
        },
        "driver_memory_plan": memory,
        "driver_memory_run": run,
        "listing_s_per_10k": listing,
        "s3_listing_moto": s3,
        "run": {
            "wall_s": summary.wall_s,
            "images_per_s": summary.images_per_s,
            "timings_s": summary.timings_s,
        },
        "commit": commit,
        "extrapolation_100M_per_night": extrapolate(memory, run, listing, s3, commit),
        "benchmark_wall_s": round(time.perf_counter() - started, 1),
        "notes": NOTES,
    }
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
