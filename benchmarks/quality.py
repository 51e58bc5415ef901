"""Fill quality: Telea vs a `maskaware` model trained for 5, 15 and 30 minutes, on held-out images.

For each domain the model is trained with the real command (`pipeline train`, resumed between
budgets) on the domain's training images, then scored on images it never saw, with large
free-form holes (25-40% of the image): masked PSNR and SSIM inside the holes, for Telea, for
the model's best guess (variation 0) and for its default seeded output (variation 0.5).

Domains and their held-out images:
- shelves: trained on the bundled shelves of the manifest's train split; scored on its held-out
  split and on freshly rendered shelves (new seeds of the same generator);
- aerial: trained on the train-split tiles, scored on the held-out tiles;
- cxr: trained on the full film, scored on the held-out detail view (a crop of the same film at
  another scale: unseen as a file, not as anatomy);
- photos: generic photos; trained on scikit-image's sample photos, scored on samples/photos.

    python benchmarks/quality.py --minutes 5,15,30 --domains shelves,aerial,cxr,photos

prints one JSON document (and writes it to --out). ``--ship`` copies each domain's final
checkpoint and model card into checkpoints/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inpaint_ops.inpainters import MaskAware, Telea  # noqa: E402
from inpaint_ops.masks import Damage  # noqa: E402
from inpaint_ops.masks.base import MaskContext  # noqa: E402
from inpaint_ops.masks.damage import FreeForm  # noqa: E402
from inpaint_ops.metrics import masked_psnr, masked_ssim  # noqa: E402
from pipelines.codec import decode_image  # noqa: E402
from pipelines.manifest_loader import load_manifest  # noqa: E402
from pipelines.planning import plan_run  # noqa: E402
from pipelines.process import assign_split  # noqa: E402
from pipelines.sources import read_bytes  # noqa: E402

HOLES = (0.25, 0.40)
MASKS_PER_IMAGE = 3
EVAL_SIDE = 256  # held-out images are downscaled so their shorter side is at most this
MANIFESTS = {
    "shelves": ROOT / "manifests/retail_shelf.yaml",
    "aerial": ROOT / "manifests/aerial_clouds.yaml",
    "cxr": ROOT / "manifests/cxr_damage.yaml",
}
PHOTO_TRAIN = (
    "astronaut", "brick", "grass", "gravel", "hubble_deep_field", "immunohistochemistry",
    "retina", "moon", "page", "text", "coins", "horse", "colorwheel", "logo", "cell", "clock",
)  # fmt: skip


def _read(path: Path) -> np.ndarray:
    return decode_image(path.read_bytes(), name=path.name)


def _small(image: np.ndarray) -> np.ndarray:
    scale = EVAL_SIDE / min(image.shape[:2])
    if scale >= 1:
        return image
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    out = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return out.reshape(size[1], size[0], image.shape[2])


def held_out_images(domain: str, manifest: Path) -> list[tuple[str, np.ndarray]]:
    """(name, image) pairs the model never trained on."""
    if domain == "photos":
        return [(p.name, _read(p)) for p in sorted((ROOT / "samples/photos").glob("*.jpg"))]
    loaded = load_manifest(manifest)
    train = loaded.manifest.train
    splits = train.splits if train else ["train"]
    out = [
        (item.image_id, decode_image(read_bytes(item.uri, {}), name=item.image_id))
        for item in plan_run(loaded).items
        if assign_split(item.image_id, loaded.manifest) not in splits
    ]
    if domain == "shelves":
        from pipelines.samples_shelves import render_shelf

        out += [(f"rendered_{i}", render_shelf(i).image) for i in range(100, 104)]
    return out


def photo_training_manifest(folder: Path) -> Path:
    """A manifest over scikit-image's sample photos (none of them in samples/photos)."""
    from skimage import data

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for name in PHOTO_TRAIN:
        pixels = getattr(data, name)()
        if pixels.dtype != np.uint8:
            pixels = (
                (pixels * 255).astype(np.uint8) if pixels.max() <= 1 else pixels.astype(np.uint8)
            )
        if pixels.ndim == 3 and pixels.shape[2] == 4:
            pixels = pixels[:, :, :3]
        cv2.imwrite(str(images / f"{name}.png"), pixels if pixels.ndim == 2 else pixels[:, :, ::-1])
    manifest = folder / "photos.yaml"
    manifest.write_text(
        "name: photos\nseed: 5\nsource: {uri: images, glob: '*.png'}\n"
        "masks: [{kind: damage, strokes: thick}]\ninpainter: {kind: telea}\n"
        "output: {uri: out}\ntrain: {splits: [train, val, test], steps: 1000000}\n"
    )
    return manifest


def eval_cases(images: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, mask) with MAT-style free-form holes covering 25-40% of the image."""
    cases = []
    holes = Damage(free_form=FreeForm(hole_ratio=HOLES))
    for i, (name, image) in enumerate(images):
        small = _small(image)
        for k in range(MASKS_PER_IMAGE):
            rng = np.random.default_rng([2026, i, k])
            context = MaskContext(name, np.zeros((0, 4)), (), None)
            cases.append((name, small, holes.generate(small, context, rng).mask))
    return cases


def score(fill, cases) -> dict[str, float]:
    psnr, ssim = [], []
    for _, image, mask in cases:
        out = fill(image, mask, np.random.default_rng(0))
        out = np.where(mask[:, :, None], out, image)
        psnr.append(masked_psnr(image, out, mask))
        ssim.append(masked_ssim(image, out, mask))
    return {"psnr": round(float(np.mean(psnr)), 3), "ssim": round(float(np.mean(ssim)), 4)}


def score_checkpoint(checkpoint: Path, cases, telea: dict[str, float]) -> dict:
    """maskaware's best guess (variation 0) at its default window size and at its training
    crop size, and its default seeded output (variation 0.5)."""
    from inpaint_ops.inpainters.maskaware import load_checkpoint

    trained_at = load_checkpoint(checkpoint)[1]
    best = score(MaskAware(weights=str(checkpoint), variation=0).load(), cases)
    small = MaskAware(weights=str(checkpoint), variation=0, resolution=trained_at)
    seeded = score(MaskAware(weights=str(checkpoint)).load(), cases)
    return {
        "maskaware": best,
        "maskaware_at_train_resolution": score(small.load(), cases),
        "maskaware_seeded": seeded,
        "delta_psnr_db": round(best["psnr"] - telea["psnr"], 3),
        "delta_ssim": round(best["ssim"] - telea["ssim"], 4),
        "target_met": best["psnr"] - telea["psnr"] >= 1.0 and best["ssim"] - telea["ssim"] >= 0.02,
    }


def evaluate_only(folder: Path, domains: list[str]) -> dict:
    """Score existing checkpoints (``folder/<manifest name>.safetensors``) without training."""
    out = {}
    for domain in domains:
        manifest = MANIFESTS[domain]
        name = load_manifest(manifest).manifest.name
        cases = eval_cases(held_out_images(domain, manifest))
        telea = score(Telea().load(), cases)
        card = json.loads((folder / f"{name}.card.json").read_text())
        out[domain] = {
            "held_out_cases": len(cases),
            "telea": telea,
            "train_minutes": round(card["elapsed_s"] / 60, 2),
            "steps": card["steps"],
            **score_checkpoint(folder / f"{name}.safetensors", cases, telea),
        }
    return out


def train_to(manifest: Path, checkpoint: Path, minutes: float) -> dict:
    """Run `pipeline train` until ``minutes`` of training in all (resuming); the model card."""
    shown = manifest.relative_to(ROOT) if manifest.is_relative_to(ROOT) else manifest
    cmd = [sys.executable, "-m", "cli", "train", str(shown), "--minutes", str(minutes)]
    cmd += ["--output", str(checkpoint), "--json", "--set", "train.steps=1000000"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pipeline train failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def run_domain(domain: str, budgets: list[float], work: Path, ship: bool) -> dict:
    manifest = MANIFESTS.get(domain) or photo_training_manifest(work / "photos")
    checkpoint = work / domain / f"{domain}.safetensors"
    cases = eval_cases(held_out_images(domain, manifest))
    telea = score(Telea().load(), cases)
    result = {"held_out_cases": len(cases), "telea": telea, "budgets": []}
    for minutes in budgets:
        t0 = time.perf_counter()
        card = train_to(manifest, checkpoint, minutes)
        wall = time.perf_counter() - t0
        result["budgets"].append(
            {
                "train_minutes": round(card["elapsed_s"] / 60, 2),
                "steps": card["steps"],
                "wall_s_this_budget": round(wall, 1),
                **score_checkpoint(checkpoint, cases, telea),
                "held_out_hole_l1": card["held_out_hole_l1"],
            }
        )
        print(json.dumps({domain: result["budgets"][-1]}), file=sys.stderr, flush=True)
    if ship and domain in MANIFESTS:
        target = ROOT / "checkpoints"
        target.mkdir(exist_ok=True)
        name = load_manifest(manifest).manifest.name
        shutil.copy(checkpoint, target / f"{name}.safetensors")
        shutil.copy(checkpoint.with_suffix(".card.json"), target / f"{name}.card.json")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", default="5,15,30", help="training budgets, comma-separated")
    parser.add_argument("--domains", default="shelves,aerial,cxr,photos")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/quality.json")
    parser.add_argument(
        "--ship", action="store_true", help="copy final checkpoints to checkpoints/"
    )
    parser.add_argument(
        "--evaluate", type=Path, help="only score the checkpoints in this folder (no training)"
    )
    args = parser.parse_args()
    if args.evaluate:
        domains = [d for d in args.domains.split(",") if d in MANIFESTS]
        print(json.dumps(evaluate_only(args.evaluate, domains), indent=2))
        return
    budgets = [float(m) for m in args.minutes.split(",")]
    report = {
        "benchmark": "quality",
        "holes": list(HOLES),
        "cpu_count": os.cpu_count(),
        "targets": {"delta_psnr_db": 1.0, "delta_ssim": 0.02, "within_minutes": 30},
        "domains": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="synthfill-quality-") as tmp:
        for domain in args.domains.split(","):
            report["domains"][domain] = run_domain(domain, budgets, Path(tmp), args.ship)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
