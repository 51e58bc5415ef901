"""Shared fixtures: one local Ray for the session, small real images, manifest writers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from matrix import ROWS, MatrixFigures, matrix_rows, write_report
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray shared by every pipeline test (startup costs seconds)."""
    import ray

    from pipelines.ray_plan import THREAD_PINS

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        logging_level=logging.WARNING,
        log_to_driver=False,
        runtime_env={"env_vars": dict(THREAD_PINS)},
    )
    yield ray
    ray.shutdown()


def photo_like(height: int, width: int, seed: int, channels: int = 3) -> np.ndarray:
    """A smooth, textured uint8 image (gradients + blobs + noise) that inpainting can work on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            (xx / width) * 200 + 30,
            (yy / height) * 180 + 40,
            ((xx + yy) / (width + height)) * 150 + 60,
        ],
        -1,
    )
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, max(6, width / 4))
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        base += blob[..., None] * rng.uniform(-80, 80, size=3)
    base += rng.normal(0, 4, size=base.shape)
    image = np.clip(base, 0, 255).astype(np.uint8)
    return image[..., :channels] if channels == 3 else image[..., :1]


def write_images(
    folder: Path, count: int, size: tuple[int, int] = (96, 128), fmt: str = "png"
) -> list[str]:
    """Write ``count`` small real image files; return their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = f"img_{i:03d}.{fmt}"
        Image.fromarray(photo_like(*size, seed=i)).save(folder / name)
        names.append(name)
    return names


def manifest_text(source_dir: Path, output: Path, **overrides: str) -> str:
    """A small manifest over ``source`` writing to ``output``; keyword values replace sections."""
    sections = {
        "name": "name: tiny",
        "seed": "seed: 11",
        "variants": "variants: 2",
        "source": f'source: {{uri: "{source_dir}", glob: "*"}}',
        "masks": "masks: [{kind: boxes, count: [1, 2], size: [0.1, 0.3]}]",
        "inpainter": "inpainter: {kind: telea, radius: 3}",
        "output": f'output: {{uri: "{output}", format: png}}',
        "compute": "compute: {actors: 2, batch_size: 2, max_error_rate: 0.0}",
    }
    sections.update(overrides)
    return "\n".join(v for v in sections.values() if v) + "\n"


def compare_manifest(work: Path, weights: Path | None = None, output_extra: str = "") -> Path:
    """The demo's compare manifest (a classical and a trained fill side by side) over copies
    of two bundled shelf photos, writing ``work/dataset``; ``output_extra`` is YAML added to
    its output section (two-space indented lines)."""
    import shutil

    sources = work / "shelves"
    sources.mkdir()
    for name in ("shelf_000.jpg", "shelf_001.jpg", "boxes.csv"):
        shutil.copy(ROOT / "samples" / "shelves" / name, sources / name)
    weights = weights or ROOT / "checkpoints" / "retail_shelf.safetensors"
    text = (ROOT / "manifests" / "retail_shelf_compare.yaml").read_text()
    text = text.replace("../samples/shelves", str(sources))
    text = text.replace("../checkpoints/retail_shelf.safetensors", str(weights))
    text = text.replace("../out/retail_shelf_compare", str(work / "dataset"))
    text = text.replace("  quality: 92\n", "  quality: 92\n" + output_extra)
    path = work / "compare.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def tiny_manifest(tmp_path):
    """Write a manifest (and its images) into tmp_path; returns a function giving its path."""

    def make(count: int = 4, **overrides: str) -> Path:
        source = tmp_path / "images"
        if not source.exists():
            write_images(source, count)
        path = tmp_path / "manifest.yaml"
        path.write_text(manifest_text(source, tmp_path / "out", **overrides))
        return path

    return make


# --- Real S3 servers (tests/s3_servers.py), one of each per session on free loopback ports ---

# The retail manifest cut down for tests: 2 images x 2 variants.
# The smallest valid manifest (paths relative to wherever it is written).
MINIMAL = """\
name: tiny
seed: 3
variants: 2
source: {uri: images, glob: "*.png"}
masks: [{kind: boxes, count: [1, 2]}]
inpainter: {kind: telea, radius: 3}
output: {uri: out}
"""


RETAIL_SMALL = ["--limit", "2", "--set", "variants=2"]


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory):
    """SeaweedFS (`weed mini`) enforcing auth; its random secret is a canary to search for."""
    import secrets

    from s3_servers import SeaweedS3

    canary = "CANARY-" + secrets.token_hex(10)
    folder = tmp_path_factory.mktemp("seaweed")
    with SeaweedS3(folder, buckets=["inputs", "datasets"], secret_key=canary) as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3():
    """moto's S3 server (in a thread of this process) for fault injection behind a proxy."""
    from s3_servers import MotoS3

    with MotoS3(buckets=["faults-in", "faults-out"]) as server:
        yield server


@pytest.fixture
def fault_proxy(moto_s3):
    """A fresh fault proxy in front of moto: no faults until a test injects them."""
    from s3_servers import FaultProxy

    with FaultProxy(moto_s3.endpoint_url) as proxy:
        yield proxy


def pipeline_cli(*args: str, env: dict[str, str], timeout: float = 240) -> tuple[int, dict, str]:
    """`pipeline run ... --json` in a subprocess, as users run it: its own Ray, whose workers
    inherit ``env`` (credentials). Returns (exit code, JSON summary, stderr)."""
    import json
    import subprocess

    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always a local Ray
    done = subprocess.run(
        [str(ROOT / ".venv/bin/pipeline"), "run", *args, "--json"],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    lines = done.stdout[done.stdout.find("{") :] if "{" in done.stdout else "{}"
    return done.returncode, json.loads(lines), done.stderr


@pytest.fixture(scope="session")
def retail_local_index(ray_local, tmp_path_factory):
    """The small retail run into a local folder: what a run through any storage must reproduce."""
    import json

    import pandas as pd

    from pipelines.manifest_loader import load_manifest
    from pipelines.run import run_manifest

    out = tmp_path_factory.mktemp("retail_local") / "dataset"
    sets = [RETAIL_SMALL[3], f"output.uri={out}"]
    summary = run_manifest(load_manifest(ROOT / "manifests/retail_shelf.yaml", sets), limit=2)
    assert summary.status == "committed", summary.message
    marker = json.loads((out / "_COMMITTED").read_text())
    return pd.read_parquet(out / marker["index"])


@pytest.fixture
def matrix(request):
    """Figures of the reliability-matrix row named by the test's ``matrix`` marker."""
    rows = matrix_rows(request.node)
    if len(rows) != 1 or rows[0] not in ROWS:
        raise pytest.UsageError(f"{request.node.nodeid}: mark it @pytest.mark.matrix(ROW)")
    return MatrixFigures(request.node, rows[0])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # one line per test: its call, or the setup that failed or skipped it
    if matrix_rows(item) and (report.when == "call" or report.outcome != "passed"):
        write_report(item, report.outcome, round(report.duration, 3))
