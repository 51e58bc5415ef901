"""The neural path's throughput: `maskaware` on the CPU by batch size, and on a GPU where present.

- G6: our model stage (crop-around-mask windows, float conversion, resize, paste) vs a bare
  forward of the same weights on the same windows, measured interleaved; target <= 1.10x.
- images/s of the whole per-item chain (read, decode, mask, fill, encode, write) for
  compute.batch_size 1, 4 and 8, and a bare forward at window batches 1, 4 and 8 (why CPUs fill
  one window at a time);
- on CUDA: images/s at 512 x 512 windows by batch size, and GPU utilisation where NVML is present.

Called by ``benchmarks/throughput.py --neural``; also runnable on its own:

    python benchmarks/neural_throughput.py [--items 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from inpaint_ops.inpainters import MaskAware  # noqa: E402
from inpaint_ops.inpainters import crops as crop_ops  # noqa: E402
from inpaint_ops.inpainters.maskaware import load_checkpoint  # noqa: E402
from inpaint_ops.inpainters.neural import to_float_rgb  # noqa: E402
from inpaint_ops.masks import ProductSlots  # noqa: E402
from inpaint_ops.masks.base import MaskContext  # noqa: E402
from pipelines.codec import decode_image  # noqa: E402
from pipelines.sources import load_annotations  # noqa: E402

CHECKPOINT = ROOT / "checkpoints" / "retail_shelf.safetensors"


def shelf_jobs(count: int) -> list[tuple[np.ndarray, np.ndarray, np.random.Generator]]:
    """``count`` (photo, product-slot mask, rng) jobs from the bundled shelves (1024 x 768)."""
    shelves = ROOT / "samples" / "shelves"
    boxes = load_annotations(str(shelves / "boxes.csv"), {})
    photos = sorted(shelves.glob("*.jpg"))
    jobs = []
    for i in range(count):
        photo = photos[i % len(photos)]
        image = decode_image(photo.read_bytes(), name=photo.name)
        ann = boxes[photo.name]
        context = MaskContext(photo.name, ann.boxes, ann.labels, None)
        rng = np.random.default_rng(i)
        mask = ProductSlots(count=(1, 3), dilate_px=6).generate(image, context, rng).mask
        jobs.append((image, mask, np.random.default_rng(100 + i)))
    return jobs


def windows_of(jobs, resolution: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The model inputs our stage would build, prepared up front for the bare forward."""
    out = []
    for image, mask, _ in jobs:
        for crop in crop_ops.plan_crops(mask, resolution, 0.5):
            pixels = crop_ops.to_resolution(to_float_rgb(crop_ops.take(image, crop)), resolution)
            hole = crop_ops.hole_at_resolution(
                crop_ops.take(mask.view(np.uint8), crop) > 0, resolution
            )
            out.append(
                (
                    torch.from_numpy(pixels).permute(2, 0, 1)[None],
                    torch.from_numpy(~hole)[None, None].float(),
                )
            )
    return out


def bare_forward(net, windows, batch: int) -> float:
    """Seconds for the network alone over ``windows``, ``batch`` at a time (same draws made)."""
    style = net.config.style_dim
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(windows), batch):
            chunk = windows[i : i + batch]
            image = torch.cat([w[0] for w in chunk])
            valid = torch.cat([w[1] for w in chunk])
            n, side = image.shape[0], image.shape[-1]
            net(image, valid, torch.randn(n, style), torch.randn(n, 1, side, side))
    return time.perf_counter() - start


def g6(items: int, repeats: int) -> dict:
    torch.set_num_threads(1)
    weights = CHECKPOINT if CHECKPOINT.exists() else None
    if weights is None:
        raise SystemExit(f"{CHECKPOINT} is missing: train it with `pipeline train` first")
    net, _ = load_checkpoint(weights)
    net.eval()
    fill = MaskAware(weights=str(weights), variation=0.5).load("cpu")
    resolution = fill.resolution  # the window size our stage uses (default: 2x the training crop)
    jobs = shelf_jobs(items)
    windows = windows_of(jobs, resolution)
    ours, bare = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        fill.many(jobs)
        ours.append(time.perf_counter() - start)
        bare.append(bare_forward(net, windows, 1))
    by_batch = {str(b): round(len(windows) / bare_forward(net, windows, b), 2) for b in (1, 4, 8)}
    ratio = statistics.median(ours) / statistics.median(bare)
    return {
        "images": items,
        "windows": len(windows),
        "resolution": resolution,
        "ours_s": round(statistics.median(ours), 3),
        "bare_forward_s": round(statistics.median(bare), 3),
        "G6_ours_vs_bare_forward": round(ratio, 3),
        "G6_target": 1.10,
        "bare_windows_per_s_by_batch": by_batch,
    }


def pipeline_by_batch(items: int) -> dict:
    """Images/s of ItemProcessor.process (whole chain, one process) for a few batch sizes."""
    from pipelines.manifest_loader import load_manifest
    from pipelines.process import ItemProcessor, RunPlan
    from pipelines.run import check_weights, plan_run, work_items

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        override = f"inpainter={{kind: maskaware, weights: {CHECKPOINT}}}"
        loaded = load_manifest(
            ROOT / "manifests/retail_shelf.yaml", [override, f"output.uri={tmp}/o", "augment=[]"]
        )
        todo = (work_items(plan_run(loaded)) * ((items + 7) // 8))[:items]
        plan = RunPlan(
            loaded.manifest, loaded.fingerprint, "bench", "bench", check_weights(loaded.manifest)
        )
        processor = ItemProcessor(plan, "cpu")
        for batch in (1, 4, 8):
            start = time.perf_counter()
            for i in range(0, len(todo), batch):
                processor.process(todo[i : i + batch])
            elapsed = time.perf_counter() - start
            out[str(batch)] = round(len(todo) * loaded.manifest.variants / elapsed, 2)
    return {"variants_per_s_by_batch_size": out, "variants_per_item": loaded.manifest.variants}


def gpu(repeats: int) -> dict:
    if not torch.cuda.is_available():
        return {"available": False}
    net, _ = load_checkpoint(CHECKPOINT)
    net = net.cuda().eval()
    result = {"available": True, "device": torch.cuda.get_device_name(), "images_per_s": {}}
    for batch in (8, 32, 64):
        x = torch.rand(batch, 3, 512, 512, device="cuda")
        v = (torch.rand(batch, 1, 512, 512, device="cuda") > 0.3).float()
        z, n = (
            torch.randn(batch, net.config.style_dim, device="cuda"),
            torch.randn(batch, 1, 512, 512, device="cuda"),
        )
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            net(x, v, z, n)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats * 3):
                net(x, v, z, n)
            torch.cuda.synchronize()
        result["images_per_s"][str(batch)] = round(
            batch * repeats * 3 / (time.perf_counter() - start), 1
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    report = {
        "benchmark": "neural_throughput",
        "cpu": g6(args.items, args.repeats),
        "pipeline_cpu": pipeline_by_batch(args.items),
        "gpu": gpu(args.repeats),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
