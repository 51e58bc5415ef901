"""`pipeline train`: fit a ``maskaware`` model on a manifest's own images and masks.

Self-supervised: crops of the source images are holed by the manifest's mask generators (plus
large free-form holes), and the model learns to give the pixels back. Every step's crops and
holes come from ``(seed, step)`` alone, so a run stopped at step N and resumed computes the same
steps it would have. Checkpoints are written with fsspec, atomically, every few minutes and
when stopped: the weights (safetensors, config in its metadata), a JSON model card, and the
state to resume from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inpaint_ops.inpainters.neural import to_float_rgb
from inpaint_ops.masks import Damage, FromFiles, combine
from inpaint_ops.masks.base import MaskContext
from inpaint_ops.masks.damage import FreeForm
from pipelines.codec import decode_image
from pipelines.errors import ItemError, RunError
from pipelines.manifest import canonical_json
from pipelines.manifest_loader import LoadedManifest
from pipelines.planning import plan_run, work_items
from pipelines.process import assign_split
from pipelines.provenance import code_version, package_versions
from pipelines.sources import filesystem, read_bytes
from pipelines.storage import publish_bytes
from pipelines.train_spec import TrainSpec

# (step done, steps in all, smoothed loss)
TrainProgress = Callable[[int, int, float], None]


@dataclass
class TrainSummary:
    """What a training session did; printed by the CLI and kept in the model card."""

    output: str
    card: dict[str, Any]
    resumed_from: int
    steps_done: int
    stopped: str  # "steps", "minutes" or "interrupted"
    images: int
    held_out: int
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Image:
    image_id: str
    pixels: np.ndarray  # float32 (H, W, 3), shorter side at most resolution * zoom high
    boxes: np.ndarray
    labels: tuple[str, ...]


class TrainingSet:
    """The source images of some splits, downscaled once, and the crops/holes drawn from them."""

    def __init__(self, loaded: LoadedManifest, spec: TrainSpec, splits: list[str]) -> None:
        m = loaded.manifest
        if any(isinstance(s, FromFiles) for s in m.masks):
            raise RunError(
                "from_files masks cannot drive training (they exist only for some images); "
                "list generated masks (e.g. damage with free_form) under masks"
            )
        self.manifest, self.spec = m, spec
        self.images: list[_Image] = []
        self.skipped: list[dict[str, str]] = []
        hashes = []
        for item in work_items(plan_run(loaded)):
            if assign_split(item["image_id"], m) not in splits:
                continue
            try:
                data = read_bytes(item["uri"], m.source.storage_options)
                image = decode_image(data, max_pixels=m.source.max_pixels, name=item["image_id"])
            except (OSError, ItemError) as exc:  # train on the rest; the card lists what was left
                self.skipped.append({"image_id": item["image_id"], "error": str(exc)[:500]})
                continue
            hashes.append((item["image_id"], hashlib.sha256(data).hexdigest()))
            self.images.append(self._prepared(item, image))
        self.fingerprint = hashlib.sha256(canonical_json(sorted(hashes)).encode()).hexdigest()

    def _prepared(self, item: dict[str, Any], image: np.ndarray) -> _Image:
        boxes = np.asarray(item["boxes"] or [], np.float64).reshape(-1, 4)
        longest_needed = self.spec.resolution * self.spec.zoom[1]
        scale = min(1.0, longest_needed / min(image.shape[:2]))
        pixels = to_float_rgb(image)
        if scale < 1:
            size = (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale))
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        return _Image(item["image_id"], pixels, boxes * scale, tuple(item["labels"]))

    def crops(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` (crop float32 (R,R,3), hole bool (R,R)) pairs, stacked."""
        pairs = [self._crop(rng) for _ in range(count)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def _crop(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        spec, size = self.spec, self.spec.resolution
        src = self.images[int(rng.integers(len(self.images)))]
        shorter = size * rng.uniform(*spec.zoom)
        scale = min(shorter / min(src.pixels.shape[:2]), 1.0)
        scale = max(scale, size / min(src.pixels.shape[:2]))  # never smaller than a crop
        dims = (
            max(size, round(src.pixels.shape[1] * scale)),
            max(size, round(src.pixels.shape[0] * scale)),
        )
        pixels = cv2.resize(src.pixels, dims, interpolation=cv2.INTER_AREA)
        context = MaskContext(src.image_id, src.boxes * scale, src.labels, None)
        hole = combine(self.manifest.masks, pixels, context, rng).mask
        top, left = _crop_origin(hole, size, rng)
        crop, hole = (
            pixels[top : top + size, left : left + size],
            hole[top : top + size, left : left + size],
        )
        if rng.random() < spec.large_holes or not hole.any():
            extra = Damage(free_form=FreeForm(hole_ratio=spec.hole_ratio))
            hole = hole | extra.generate(crop, context, rng).mask
        return np.ascontiguousarray(crop), hole


def _crop_origin(hole: np.ndarray, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left of a crop centred on a random hole pixel (a random place if there is none)."""
    height, width = hole.shape
    ys, xs = np.nonzero(hole)
    if len(ys):
        k = int(rng.integers(len(ys)))
        cy, cx = int(ys[k]), int(xs[k])
    else:
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top = min(max(cy - size // 2, 0), height - size)
    left = min(max(cx - size // 2, 0), width - size)
    return top, left


def resolve_output(loaded: LoadedManifest, spec: TrainSpec) -> str:
    """The checkpoint URL: ``{name}`` filled in, a relative path taken from the manifest's folder."""
    from pipelines.manifest import resolve_uri

    uri = spec.output.replace("{name}", loaded.manifest.name)
    if not uri.endswith(".safetensors"):
        raise RunError(f"train.output must end in .safetensors, got {uri!r}")
    return resolve_uri(uri, Path(loaded.path).parent.resolve())


def recipe_fingerprint(loaded: LoadedManifest, spec: TrainSpec, data_fingerprint: str) -> str:
    """What a resumed run must share with the saved one (not the step or time budget)."""
    m = loaded.manifest
    recipe = spec.model_dump(
        mode="json", exclude={"steps", "minutes", "checkpoint_minutes", "output", "device"}
    )
    masks = [s.model_dump(mode="json") for s in m.masks]
    data = {"train": recipe, "masks": masks, "seed": m.seed, "data": data_fingerprint}
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def _paths(uri: str) -> dict[str, str]:
    stem = uri[: -len(".safetensors")]
    return {"weights": uri, "card": stem + ".card.json", "resume": stem + ".resume.safetensors"}


class CheckpointStore:
    """Reads and writes the three checkpoint files with fsspec (atomically where local)."""

    def __init__(self, uri: str, storage_options: dict[str, Any]) -> None:
        self.uris = _paths(uri)
        self.fs, _ = filesystem(uri, storage_options)

    def _path(self, key: str) -> str:
        return self.fs._strip_protocol(self.uris[key])

    def load_resume(self) -> tuple[dict[str, Any], dict[str, str]] | None:
        """(tensors, metadata) of the resume state, or None when there is none."""
        from safetensors.torch import load

        path = self._path("resume")
        if not self.fs.exists(path):
            return None
        data = self.fs.cat_file(path)
        try:
            return load(data), _safetensors_metadata(data)
        except Exception as exc:  # a truncated or foreign file: say which, and the way out
            raise RunError(
                f"cannot read the resume state {self.uris['resume']} ({type(exc).__name__}: "
                f"{exc}); pass --fresh to start over"
            ) from exc

    def save(self, weights: bytes, card: dict[str, Any], resume: bytes) -> None:
        # Weights and card first: a crash between writes leaves an older resume state,
        # which only repeats some steps.
        publish_bytes(self.fs, self._path("weights"), weights)
        publish_bytes(self.fs, self._path("card"), (json.dumps(card, indent=2) + "\n").encode())
        publish_bytes(self.fs, self._path("resume"), resume)

    def clear_resume(self) -> None:
        path = self._path("resume")
        if self.fs.exists(path):
            self.fs.rm(path)


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors byte string (its JSON header)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    return dict(header.get("__metadata__") or {})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def train_model(
    loaded: LoadedManifest,
    spec: TrainSpec,
    *,
    fresh: bool = False,
    progress: TrainProgress | None = None,
    storage_options: dict[str, Any] | None = None,
) -> TrainSummary:
    """Train (or resume training) and write checkpoints; see the module docstring."""
    from pipelines.train_loop import TrainingRun

    run = TrainingRun(loaded, spec, storage_options or {})
    return run.execute(fresh=fresh, progress=progress)


def describe_card(
    loaded: LoadedManifest,
    spec: TrainSpec,
    *,
    data: TrainingSet,
    held_out: int,
    step: int,
    elapsed_s: float,
    history: list[dict[str, float]],
    held_out_loss: float | None,
) -> dict[str, Any]:
    """The model card: what the weights are, what made them, and how well they did."""
    m = loaded.manifest
    return {
        "model": "maskaware",
        "format": "synthfill.maskaware.v1",
        "created": _now(),
        "manifest": {"name": m.name, "path": _portable(loaded.path, Path.cwd()), "seed": m.seed},
        "data": {
            "source": _portable(m.source.uri, Path(loaded.path).resolve().parent),
            "glob": m.source.glob,
            "splits": list(spec.splits),
            "images": len(data.images),
            "held_out_images": held_out,
            "skipped": data.skipped,
            "fingerprint": data.fingerprint,
        },
        "masks": [s.model_dump(mode="json") for s in m.masks],
        "train": spec.model_dump(mode="json", exclude={"output"}),  # how, not where
        "steps": step,
        "elapsed_s": round(elapsed_s, 1),
        "loss": history[-1] if history else None,
        "held_out_hole_l1": held_out_loss,
        "history": history,
        "code_version": code_version(),
        "packages": package_versions(),
    }


def _portable(uri: str, base: Path) -> str:
    """A local path as seen from ``base`` (cards and weights travel; machine paths should not)."""
    if "://" in uri and not uri.startswith("file://"):
        return uri
    path = Path(uri.removeprefix("file://"))
    if not path.is_absolute():
        return uri
    return os.path.relpath(path, base)


def smoothed(previous: float | None, value: float, steps: int) -> float:
    """An exponential moving average that starts at the first value."""
    if previous is None or math.isnan(previous):
        return value
    weight = 2 / (min(steps, 50) + 1)
    return previous + weight * (value - previous)
