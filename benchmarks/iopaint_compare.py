"""synthfill next to IOPaint's batch CLI on the same images and masks, start-up included.

What: images/s of three ways of filling the same ``--images`` photos with the same masks by OpenCV's
Telea inpainting, each timed wall-clock from process start to exit (median of ``--repeats``):

* ``iopaint``: ``iopaint run --model cv2 --device cpu --image DIR --mask DIR --output DIR --config
  CFG`` in its own virtualenv. IOPaint's cv2 model calls ``cv2.inpaint`` with ``cv2_flag`` and
  ``cv2_radius`` from its request config, whose defaults are ``INPAINT_NS`` and 4; CFG sets
  ``INPAINT_TELEA`` and ``--radius`` (default 4) so both tools run the same algorithm at the same
  radius. Everything else is IOPaint's stock behaviour: its CROP strategy for images whose longer
  side exceeds 800 px, and PNG outputs (Pillow, default compression level 6; not configurable).
* ``synthfill``: ``pipeline run MANIFEST --overwrite --json`` on a generated manifest: a
  ``from_files`` mask generator reading the same mask PNGs, the ``telea`` inpainter at the same
  radius, 1 variant, no augmentation, ``output.format: png`` (IOPaint can only write PNG, so both
  write lossless PNG; synthfill at its default ``png_level`` 1). Twice: ``compute.actors`` = the
  number of cores, and the manifest's defaults (no ``compute`` section; where the default
  ``actors`` equals the core count, as on 2 cores, the two measure the same settings and their gap
  is run-to-run noise). Ray start-up, planning, the mask PNGs and Parquet index synthfill writes,
  and the commit are all inside the time.
* ``bare_loop``: a floor reference, one plain Python process (the main environment's interpreter)
  doing ``cv2.imread``, ``cv2.inpaint`` (Telea, same radius) and ``cv2.imwrite`` (PNG level 1, as
  synthfill writes) over the same files, interpreter start-up included.

The repeats are interleaved (iopaint, synthfill at cores, synthfill at defaults, bare loop, then
again) because the machine is shared and noisy; compare the ratios, not absolute figures.

Inputs are made reproducibly (``--seed``) from the bundled shelf photos (samples/shelves/*.jpg,
1024x768): each image is a random 4:3 crop of 70-100% of a photo's width, resized to a width of
640, 768, 896 or 1024 px and saved as JPEG; its mask (white = hole) covers 1-3 neighbouring
annotated products on one shelf row, grown by 2 px and dilated by 6 px as in
manifests/retail_shelf.yaml. Masks are 8-bit PNGs with the image's name.

IOPaint's virtualenv (``--iopaint-venv``, default ``<tempdir>/synthfill-iopaint-venv``) is reused
when it already imports iopaint and torch; otherwise it is made with ``python -m venv`` and
``pip install torch==2.13.0 iopaint``, then ``pip uninstall -y torchvision`` (the torchvision that
the resolver picks fails to import beside that torch, and IOPaint's cv2 model does not need it).
On the machines of PERFORMANCE.md pip's configuration (``find-links``) offers the local CPU wheel
``torch-2.13.0+cpu``, the same torch the main .venv has (see the Makefile), so no CUDA wheels are
downloaded (~1.9 GB venv, ~2 min). Elsewhere plain PyPI would pull several GB of CUDA wheels: pass
``--torch-index-url https://download.pytorch.org/whl/cpu`` for the CPU build. The exact iopaint and
torch versions, and the install time when this run installed them, go into the JSON.

Prints one JSON document and writes it to benchmarks/results/iopaint_compare.json. Exits non-zero
with a message when IOPaint cannot be installed or run, or when a tool does not produce every
output (IOPaint: one PNG per image; synthfill: a committed version with one row per image).

    .venv/bin/python benchmarks/iopaint_compare.py [--repeats 3] [--images 128] [--radius 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "iopaint_compare.json"
SAMPLES = ROOT / "samples" / "shelves"
TARGET = 10.0  # PERFORMANCE.md: >= 10x IOPaint's cv2 batch throughput
WIDTHS = (640, 768, 896, 1024)
MARGIN_PX, DILATE_PX = 2, 6  # as manifests/retail_shelf.yaml's product_slots

BARE_LOOP = """
import sys, pathlib, cv2
cv2.setNumThreads(1)
images, masks, out, radius = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), \
    pathlib.Path(sys.argv[3]), int(sys.argv[4])
for path in sorted(images.glob("*.jpg")):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    mask = cv2.imread(str(masks / (path.stem + ".png")), cv2.IMREAD_GRAYSCALE)
    filled = cv2.inpaint(image, mask, radius, cv2.INPAINT_TELEA)
    cv2.imwrite(str(out / (path.stem + ".png")), filled, [cv2.IMWRITE_PNG_COMPRESSION, 1])
"""


class BenchError(RuntimeError):
    """The comparison cannot be made honestly; the message says why."""


# ---------------------------------------------------------------- inputs


def _slot_mask(boxes: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """1-3 neighbouring boxes of one shelf row (boxes in this image's pixels), white = hole."""
    rows: dict[int, list[np.ndarray]] = {}
    for box in boxes[np.argsort(boxes[:, 1])]:
        key = next((k for k in rows if abs(k - box[1]) < 0.5 * (box[3] - box[1])), int(box[1]))
        rows.setdefault(key, []).append(box)
    row = sorted(list(rows.values())[rng.integers(len(rows))], key=lambda b: b[0])
    count = int(min(rng.integers(1, 4), len(row)))
    start = int(rng.integers(0, len(row) - count + 1))
    mask = np.zeros((height, width), np.uint8)
    for x1, y1, x2, y2 in row[start : start + count]:
        x1, y1 = max(int(x1) - MARGIN_PX, 0), max(int(y1) - MARGIN_PX, 0)
        x2, y2 = min(int(np.ceil(x2)) + MARGIN_PX, width), min(int(np.ceil(y2)) + MARGIN_PX, height)
        mask[y1:y2, x1:x2] = 255
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * DILATE_PX + 1, 2 * DILATE_PX + 1))
    return cv2.dilate(mask, kernel)


def _one_input(photo: np.ndarray, boxes: np.ndarray, rng: np.random.Generator):
    """A random 4:3 crop of the photo resized to one of WIDTHS, and its slot mask."""
    height, width = photo.shape[:2]
    for _ in range(100):
        crop_w = int(width * rng.uniform(0.7, 1.0))
        crop_h = min(int(crop_w * 3 / 4), height)
        x0, y0 = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        inside = boxes[
            (boxes[:, 0] >= x0)
            & (boxes[:, 1] >= y0)
            & (boxes[:, 2] <= x0 + crop_w)
            & (boxes[:, 3] <= y0 + crop_h)
        ]
        if len(inside):
            break
    else:
        raise BenchError("no crop of a sample photo keeps an annotated box")
    out_w = int(rng.choice(WIDTHS))
    scale = out_w / crop_w
    out_h = round(crop_h * scale)
    image = cv2.resize(
        photo[y0 : y0 + crop_h, x0 : x0 + crop_w], (out_w, out_h), interpolation=cv2.INTER_AREA
    )
    moved = (inside - [x0, y0, x0, y0]) * scale
    return image, _slot_mask(moved, out_h, out_w, rng)


def make_inputs(folder: Path, count: int, seed: int) -> dict[str, Any]:
    """``count`` JPEG images under folder/images and their PNG masks under folder/masks."""
    table = pd.read_csv(SAMPLES / "boxes.csv")
    photos = sorted(SAMPLES.glob("*.jpg"))
    if not photos:
        raise BenchError(f"no sample photos in {SAMPLES}")
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(seed)
    sizes, holes = [], []
    for i in range(count):
        path = photos[i % len(photos)]
        boxes = table[table.image_name == path.name][["x1", "y1", "x2", "y2"]].to_numpy(float)
        image, mask = _one_input(cv2.imread(str(path), cv2.IMREAD_COLOR), boxes, rng)
        cv2.imwrite(
            str(folder / "images" / f"shelf_{i:04d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
        cv2.imwrite(str(folder / "masks" / f"shelf_{i:04d}.png"), mask)
        sizes.append(image.shape[:2])
        holes.append(float(np.count_nonzero(mask)) / mask.size)
    heights, widths = zip(*sizes, strict=True)
    return {
        "images": count,
        "seed": seed,
        "from": "samples/shelves/*.jpg (1024x768), random 4:3 crops resized",
        "width_px": [min(widths), max(widths)],
        "height_px": [min(heights), max(heights)],
        "mean_megapixels": round(float(np.mean([h * w for h, w in sizes])) / 1e6, 3),
        "hole_fraction_mean": round(float(np.mean(holes)), 4),
        "hole_fraction_range": [round(min(holes), 4), round(max(holes), 4)],
        "image_format": "jpeg q95",
        "mask_format": "png, 8-bit, white = hole",
    }


# ---------------------------------------------------------------- IOPaint's environment


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _iopaint_versions(venv: Path) -> dict[str, str] | None:
    """Versions in the venv if iopaint, torch and its CLI work there, else None."""
    probe = (
        "import json, importlib.metadata as m, importlib.util as u, cv2, torch, iopaint\n"
        "print(json.dumps({'iopaint': m.version('iopaint'), 'torch': torch.__version__,"
        " 'opencv': cv2.__version__, 'python': __import__('platform').python_version(),"
        " 'torchvision_installed': u.find_spec('torchvision') is not None}))"
    )
    python = _venv_python(venv)
    if not python.exists():
        return None
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    cli = subprocess.run([str(venv / "bin" / "iopaint"), "run", "--help"], capture_output=True)
    if done.returncode != 0 or cli.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pip(venv: Path, *args: str) -> None:
    cmd = [str(_venv_python(venv)), "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise BenchError(f"IOPaint install step failed: {' '.join(cmd)}\n{tail}")


def ensure_iopaint(venv: Path, torch_index_url: str | None) -> dict[str, Any]:
    """Reuse or build IOPaint's virtualenv; its versions and how long installing took."""
    found = _iopaint_versions(venv)
    if found is not None:
        return {**found, "venv": str(venv), "installed_this_run": False, "install_s": None}
    print(f"installing IOPaint into {venv} ...", file=sys.stderr)
    start = time.perf_counter()
    shutil.rmtree(venv, ignore_errors=True)
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        raise BenchError(f"cannot create a virtualenv at {venv}: {made.stderr.strip()}")
    extra = ["--extra-index-url", torch_index_url] if torch_index_url else []
    _pip(venv, "install", "torch==2.13.0", "iopaint", *extra)
    _pip(venv, "uninstall", "-y", "torchvision")
    install_s = time.perf_counter() - start
    found = _iopaint_versions(venv)
    if found is None:
        raise BenchError(f"IOPaint was installed into {venv} but does not import or run")
    return {
        **found,
        "venv": str(venv),
        "installed_this_run": True,
        "install_s": round(install_s, 1),
    }


# ---------------------------------------------------------------- the runs


def _timed(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall-clock seconds of a command from start to exit, and its stdout; raises on failure."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
    if done.returncode != 0:
        raise BenchError(f"{cmd[0]} exited {done.returncode}; see {log}")
    return seconds, done.stdout


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def run_iopaint(venv: Path, work: Path, count: int, run: int) -> float:
    out = _fresh(work / "iopaint_out")
    cmd = [
        str(venv / "bin" / "iopaint"),
        "run",
        "--model",
        "cv2",
        "--device",
        "cpu",
        "--image",
        str(work / "images"),
        "--mask",
        str(work / "masks"),
        "--output",
        str(out),
        "--config",
        str(work / "iopaint_config.json"),
        "--model-dir",
        str(work / "iopaint_models"),
    ]
    seconds, _ = _timed(cmd, work / f"iopaint_{run}.log")
    written = len(list(out.glob("*.png")))
    if written != count:
        raise BenchError(f"IOPaint wrote {written} outputs, expected {count}; see {work}")
    return seconds


def write_manifest(work: Path, radius: int, actors: int | None) -> Path:
    """A synthfill manifest over the inputs; compute section only when actors is given."""
    name = "defaults" if actors is None else f"actors{actors}"
    lines = [
        f"name: iopaint_compare_{name}",
        "seed: 1",
        "variants: 1",
        "source: {uri: images, glob: '*.jpg'}",
        "masks:",
        "  - {kind: from_files, uri: masks, suffix: .png, polarity: white_fill}",
        f"inpainter: {{kind: telea, radius: {radius}}}",
        "augment: []",
        f"output: {{uri: synthfill_out_{name}, format: png}}",
    ]
    if actors is not None:
        lines.append(f"compute: {{actors: {actors}}}")
    path = work / f"synthfill_{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_synthfill(pipeline: Path, manifest: Path, count: int, run: int) -> tuple[float, dict]:
    cmd = [str(pipeline), "run", str(manifest), "--overwrite", "--json"]
    log = manifest.with_name(f"{manifest.stem}_{run}.log")
    seconds, stdout = _timed(cmd, log)
    summary = json.loads(stdout[stdout.index("{") :])
    if summary.get("status") != "committed" or summary.get("rows_written") != count:
        raise BenchError(
            f"synthfill committed {summary.get('rows_written')} rows (status "
            f"{summary.get('status')}), expected {count}; see {log}"
        )
    return seconds, summary


def run_bare(work: Path, radius: int, count: int, run: int) -> float:
    out = _fresh(work / "bare_out")
    cmd = [sys.executable, "-c", BARE_LOOP, str(work / "images"), str(work / "masks"), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    seconds, _ = _timed([*cmd, str(radius)], work / f"bare_{run}.log", env)
    written = len(list(out.glob("*.png")))
    if written != count:
        raise BenchError(f"the bare loop wrote {written} outputs, expected {count}")
    return seconds


# ---------------------------------------------------------------- report


def _stats(seconds: list[float], count: int) -> dict[str, Any]:
    return {
        "wall_s_median": round(statistics.median(seconds), 3),
        "wall_s_all": [round(s, 3) for s in seconds],
        "images_per_s_median": round(count / statistics.median(seconds), 3),
        "images_per_s_all": [round(count / s, 3) for s in seconds],
    }


def _compute_defaults() -> dict[str, Any]:
    """synthfill's default compute settings (what a manifest without ``compute`` gets)."""
    sys.path.insert(0, str(ROOT))
    from pipelines.manifest import ComputeSpec

    spec = ComputeSpec()
    return {"actors": spec.actors, "batch_size": spec.batch_size}


def _pipeline_command() -> Path:
    beside = Path(sys.executable).with_name("pipeline")
    found = beside if beside.exists() else ROOT / ".venv" / "bin" / "pipeline"
    if not found.exists():
        raise BenchError("no `pipeline` command: run this with the project's .venv python")
    return found


def compare(args: argparse.Namespace) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    iopaint = ensure_iopaint(args.iopaint_venv, args.torch_index_url)
    pipeline = _pipeline_command()
    work = Path(tempfile.mkdtemp(prefix="iopaint_compare_"))
    inputs = make_inputs(work, args.images, args.seed)
    config = {"cv2_flag": "INPAINT_TELEA", "cv2_radius": args.radius}
    (work / "iopaint_config.json").write_text(json.dumps(config))
    manifests = {
        "synthfill_cores": write_manifest(work, args.radius, cores),
        "synthfill_defaults": write_manifest(work, args.radius, None),
    }
    seconds: dict[str, list[float]] = {
        k: [] for k in ("iopaint", "synthfill_cores", "synthfill_defaults", "bare_loop")
    }
    summaries: dict[str, list[dict]] = {k: [] for k in manifests}
    for run in range(args.repeats):
        seconds["iopaint"].append(run_iopaint(args.iopaint_venv, work, args.images, run))
        for key, manifest in manifests.items():
            wall, summary = run_synthfill(pipeline, manifest, args.images, run)
            seconds[key].append(wall)
            summaries[key].append(summary)
        seconds["bare_loop"].append(run_bare(work, args.radius, args.images, run))
        print(
            f"repeat {run + 1}/{args.repeats}: "
            + json.dumps({k: round(v[-1], 2) for k, v in seconds.items()}),
            file=sys.stderr,
        )
    tools = {key: _stats(values, args.images) for key, values in seconds.items()}
    for key, runs in summaries.items():
        tools[key]["pipeline_reported_wall_s"] = [round(s["wall_s"], 3) for s in runs]
        tools[key]["pipeline_stage_s_median"] = {
            stage: round(statistics.median(s["timings_s"].get(stage, 0.0) for s in runs), 3)
            for stage in runs[0].get("timings_s", {})
        }
    rate = {key: tools[key]["images_per_s_median"] for key in tools}
    best = max(rate["synthfill_cores"], rate["synthfill_defaults"])
    ratios = {
        "synthfill_cores_vs_iopaint": round(rate["synthfill_cores"] / rate["iopaint"], 3),
        "synthfill_defaults_vs_iopaint": round(rate["synthfill_defaults"] / rate["iopaint"], 3),
        "synthfill_cores_vs_bare_loop": round(rate["synthfill_cores"] / rate["bare_loop"], 3),
        "synthfill_defaults_vs_bare_loop": round(rate["synthfill_defaults"] / rate["bare_loop"], 3),
        "bare_loop_vs_iopaint": round(rate["bare_loop"] / rate["iopaint"], 3),
    }
    result = {
        "workload": {**inputs, "repeats": args.repeats, "cores": cores, "scratch": str(work)},
        "method": {
            "timing": "subprocess wall-clock, start to exit (start-up included); median of "
            "repeats interleaved iopaint, synthfill_cores, synthfill_defaults, bare_loop",
            "algorithm": f"cv2.inpaint INPAINT_TELEA, radius {args.radius}, in every tool",
            "iopaint": "iopaint run --model cv2 --device cpu --image --mask --output --config "
            f"{json.dumps(config)}; stock CROP strategy; writes PNG (Pillow level 6)",
            "synthfill_cores": f"pipeline run --overwrite, from_files masks, telea, variants 1, "
            f"png (png_level 1), compute.actors={cores}",
            "synthfill_defaults": "the same with no compute section: ComputeSpec defaults "
            f"{_compute_defaults()}",
            "bare_loop": "one python process: cv2.imread, cv2.inpaint, cv2.imwrite PNG level 1, "
            "cv2.setNumThreads(1)",
        },
        "versions": {
            "iopaint": iopaint["iopaint"],
            "iopaint_torch": iopaint["torch"],
            "iopaint_opencv": iopaint["opencv"],
            "iopaint_python": iopaint["python"],
            "iopaint_torchvision_installed": iopaint["torchvision_installed"],
            "synthfill_opencv": cv2.__version__,
            "synthfill_python": sys.version.split()[0],
        },
        "iopaint_install": {
            "command": "pip install torch==2.13.0 iopaint; pip uninstall -y torchvision",
            "venv": iopaint["venv"],
            "installed_this_run": iopaint["installed_this_run"],
            "install_s": iopaint["install_s"],
            "torch_index_url": args.torch_index_url,
        },
        "tools": tools,
        "ratios_images_per_s": ratios,
        "target": {
            "text": ">= 10x IOPaint's cv2 batch throughput (images/s, start-up included)",
            "ratio": round(best / rate["iopaint"], 3),
            "measured_with": "synthfill_cores"
            if rate["synthfill_cores"] >= rate["synthfill_defaults"]
            else "synthfill_defaults",
            "threshold": TARGET,
            "met": best / rate["iopaint"] >= TARGET,
        },
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--radius", type=int, default=4, help="Telea radius in every tool")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument(
        "--iopaint-venv",
        type=Path,
        default=Path(tempfile.gettempdir()) / "synthfill-iopaint-venv",
        help="IOPaint's virtualenv: reused when it works, else created",
    )
    parser.add_argument(
        "--torch-index-url",
        default=None,
        help="extra pip index for torch (e.g. https://download.pytorch.org/whl/cpu)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder and logs")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    try:
        result = compare(args)
    except BenchError as exc:
        print(f"iopaint_compare: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
