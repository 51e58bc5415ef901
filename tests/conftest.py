"""Shared fixtures: one local Ray for the session, small real images, manifest writers."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
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
