"""Memory of a whole run as the job grows: is RSS flat from 100 to 2,000 images?

Runs ``pipeline run`` (the retail manifest's product slots and Telea fill, 1 variant, 2 actors,
JPEG) on 100 and on 2,000 source images, as a user would, and samples every 0.2 s the resident
memory of every process of the run: the driver, and all that it started (Ray's GCS, raylet,
dashboard, the actors). Sources are the bundled shelf photos, cropped and scaled to 640 px wide
at seeded offsets, so each file differs.

Reported per size: peak and late-run median of the total, of its private part (resident minus
shared pages, so without Ray's object store, which every process maps and which fills as blocks
pass through it, up to its fixed size) and of the driver alone (the late
median is over the later half of the samples taken while every process of the run is up: work
flowing, start-up and teardown left out), and
the growth from 100 to 2,000 images. "Flat" is the target of the issue: the steady-state total
at 2,000 within 10% of that at 100 (actors do not accumulate per item, the driver does not hold
the items' results).

    python benchmarks/memory.py [--small 100] [--large 2000]

prints one JSON document and writes it to benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FLAT = 1.10  # steady-state total RSS at the large size / at the small size
PAGE = os.sysconf("SC_PAGE_SIZE")


def make_sources(folder: Path, count: int, seed: int = 0) -> None:
    shelves = [
        Image.open(p).convert("RGB") for p in sorted((ROOT / "samples/shelves").glob("*.jpg"))
    ]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        shelf = shelves[i % len(shelves)]
        w, h = shelf.size
        left, top = int(rng.integers(0, w // 8)), int(rng.integers(0, h // 8))
        crop = shelf.crop((left, top, left + w * 7 // 8, top + h * 7 // 8))
        crop.resize((640, round(640 * crop.height / crop.width))).save(
            folder / f"shelf_{i:05d}.jpg", quality=90
        )


def manifest(sources: Path, out: Path) -> Path:
    text = f"""name: memory
seed: 7
variants: 1
source: {{uri: "{sources}", glob: "*.jpg"}}
masks:
  - {{kind: boxes, count: [2, 4], size: [0.05, 0.15]}}
inpainter: {{kind: telea, radius: 5}}
output: {{uri: "{out}", format: jpeg, quality: 92}}
compute: {{actors: 2, batch_size: 4}}
"""
    path = out.parent / f"{out.name}.yaml"
    path.write_text(text)
    return path


def tree_rss(root: int) -> tuple[int, int, int, int]:
    """Resident bytes of root and every descendant, of root alone, and the private part of the
    first (resident minus shared pages: without Ray's object store, mapped by several processes,
    and the libraries), and the number of processes, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    private: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/statm") as handle:
                pages = handle.read().split()
            rss[int(entry)] = int(pages[1]) * PAGE
            private[int(entry)] = (int(pages[1]) - int(pages[2])) * PAGE
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, own, count, todo = 0, 0, 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        own += private.get(pid, 0)
        count += pid in rss
        todo += children.get(pid, [])
    return total, rss.get(root, 0), own, count


def measure(path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [str(ROOT / ".venv/bin/pipeline"), "run", str(path), "--overwrite", "--json"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    samples: list[tuple[int, int, int, int]] = []

    def sample() -> None:
        while process.poll() is None:
            samples.append(tree_rss(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = process.communicate()
    sampler.join()
    wall = time.perf_counter() - start
    summary = json.loads(stdout[stdout.find(b"{") :])
    if process.returncode != 0 or summary["status"] != "committed":
        raise SystemExit(f"run failed: {summary.get('message')}")
    # Steady state: the later half of the samples taken while every process of the run was up
    # (Ray's and the actors), i.e. while work flows; not start-up, not the teardown.
    busy = [s for s in samples if s[3] == max(s[3] for s in samples)]
    late = busy[len(busy) // 2 :]
    mib = 2**20
    return {
        "images": summary["rows_written"],
        "wall_s": round(wall, 2),
        "images_per_s": round(summary["rows_written"] / wall, 2),
        "samples": len(samples),
        "total_peak_mib": round(max(s[0] for s in samples) / mib, 1),
        "total_late_median_mib": round(statistics.median(s[0] for s in late) / mib, 1),
        "private_late_median_mib": round(statistics.median(s[2] for s in late) / mib, 1),
        "driver_peak_mib": round(max(s[1] for s in samples) / mib, 1),
        "driver_late_median_mib": round(statistics.median(s[1] for s in late) / mib, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/memory.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="synthfill-memory-") as scratch:
        work = Path(scratch)
        runs = {}
        for size in (args.small, args.large):
            make_sources(work / f"src{size}", size)
            runs[str(size)] = measure(manifest(work / f"src{size}", work / f"out{size}"))
    small, large = runs[str(args.small)], runs[str(args.large)]
    growth = large["total_late_median_mib"] / small["total_late_median_mib"]
    result = {
        "workload": "boxes masks + telea, 640 px JPEG shelves, 1 variant, 2 actors",
        "cores": os.cpu_count(),
        "runs": runs,
        "ratios": {
            "total_late_rss_large_vs_small": round(growth, 3),
            "private_late_rss_large_vs_small": round(
                large["private_late_median_mib"] / small["private_late_median_mib"], 3
            ),
            "driver_late_rss_large_vs_small": round(
                large["driver_late_median_mib"] / small["driver_late_median_mib"], 3
            ),
            "total_peak_rss_large_vs_small": round(
                large["total_peak_mib"] / small["total_peak_mib"], 3
            ),
        },
        "target": {"total_late_rss_large_vs_small_at_most": FLAT, "met": growth <= FLAT},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
