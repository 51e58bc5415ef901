"""Classical inpainters: our stage vs bare cv2.inpaint (G4), large-image paths vs full (G4b).

Prints one JSON document. Every figure is the median of interleaved runs (A, B, A, B, ...) so
that drift on a shared machine hits both sides alike; compare the ratios, not absolute times.

    python benchmarks/classical.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
from skimage import data

from inpaint_ops.composite import mask_fraction
from inpaint_ops.inpainters import NavierStokes, Telea
from inpaint_ops.inpainters.large_image import hole_windows

G4_MAX_RATIO = 1.10
G4B_MIN_SPEEDUP = 2.5
RADIUS = 5  # the inpainters' default
# (name, radius, hole radii in px) of the window-path cases; the first is the headline G4b.
WINDOW_CASES = (
    ("window_small_holes", RADIUS, (8, 30)),
    ("window_small_holes_radius3", 3, (8, 30)),
    ("window_tiny_holes", RADIUS, (3, 10)),
)


def photo(height: int, width: int) -> np.ndarray:
    """A real photo (skimage's astronaut, RGB uint8) resized to (height, width)."""
    return cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_CUBIC)


def blob_mask(height: int, width: int, fraction: float, seed: int) -> np.ndarray:
    """Random filled ellipses and boxes (product slots, blotches) until ``fraction`` is covered."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    while np.count_nonzero(mask) < fraction * mask.size:
        row, col = int(rng.integers(0, height)), int(rng.integers(0, width))
        size = int(rng.integers(height // 40, height // 12))
        if rng.random() < 0.5:
            axes = (size, int(size * rng.uniform(0.4, 1.0)))
            cv2.ellipse(mask, (col, row), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        else:
            cv2.rectangle(mask, (col, row), (col + size, row + size // 2), 1, -1)
    return mask.astype(bool)


def small_holes_mask(
    height: int, width: int, count: int, radii: tuple[int, int], seed: int
) -> np.ndarray:
    """A handful of round holes with radii in ``radii`` (dust, small objects, blemishes)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(count):
        row, col = int(rng.integers(40, height - 40)), int(rng.integers(40, width - 40))
        cv2.circle(mask, (col, row), int(rng.integers(radii[0], radii[1] + 1)), 1, -1)
    return mask.astype(bool)


def interleaved_ms(runs: int, **contenders: Callable[[], object]) -> dict[str, float]:
    """Median wall time in ms of each contender, timed in turn, ``runs`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()  # warm up caches and lazy initialisation outside the timed rounds
    for _ in range(runs):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: round(statistics.median(values), 2) for name, values in times.items()}


def g4(runs: int) -> dict[str, object]:
    """Our Telea / Navier-Stokes stage vs the bare cv2.inpaint call on one photo and mask."""
    image = photo(768, 1024)
    mask = blob_mask(768, 1024, 0.10, seed=4)
    mask_u8 = mask.astype(np.uint8) * 255  # the bare call gets its mask ready-made
    rng = np.random.default_rng(0)
    result: dict[str, object] = {"image": "astronaut 1024x768 RGB uint8", "radius": RADIUS}
    result["mask_fraction"] = round(mask_fraction(mask), 4)
    for spec, flag in ((Telea(radius=RADIUS), cv2.INPAINT_TELEA), (NavierStokes(), cv2.INPAINT_NS)):
        fn = spec.load()
        ms = interleaved_ms(
            runs,
            ours=lambda fn=fn: fn(image, mask, rng),
            bare=lambda flag=flag: cv2.inpaint(image, mask_u8, RADIUS, flag),
        )
        result[spec.kind] = {**ms, "ratio": round(ms["ours"] / ms["bare"], 3)}
    return result


def path_vs_full(
    runs: int, image: np.ndarray, mask: np.ndarray, fast: Telea, **extra: Callable[[], object]
) -> dict:
    """Median ms of ``fast`` (a large-image path), of the full path and of any ``extra``."""
    rng = np.random.default_rng(0)
    fast_fn = fast.load()
    full_fn = fast.model_copy(update={"large_image": "full"}).load()
    ms = interleaved_ms(
        runs,
        **{fast.large_image: lambda: fast_fn(image, mask, rng)},
        full=lambda: full_fn(image, mask, rng),
        **extra,
    )
    return {
        "radius": fast.radius,
        "mask_fraction": round(mask_fraction(mask), 4),
        **ms,
        "speedup": round(ms["full"] / ms[fast.large_image], 2),
    }


def bare_windows(image: np.ndarray, mask: np.ndarray, windows: list, radius: int) -> Callable:
    """Only the cv2.inpaint calls of the window path: the floor no windowing can go below."""
    crops = [(image[r, c], mask[r, c].astype(np.uint8)) for r, c in windows]
    return lambda: [cv2.inpaint(crop, hole, radius, cv2.INPAINT_TELEA) for crop, hole in crops]


def g4b(runs: int) -> dict[str, object]:
    """Large images: the window path (a handful of small holes) and half resolution (10% hole).

    The window path saves the fixed per-image cost of cv2.inpaint, not the work per hole pixel,
    so its speedup depends on the holes' total area and on the radius: both are swept.
    """
    image = photo(1536, 2048)
    result: dict[str, object] = {"image": "astronaut 2048x1536 (3.1 MP) RGB uint8, Telea"}
    for name, radius, radii in WINDOW_CASES:
        mask = small_holes_mask(1536, 2048, count=8, radii=radii, seed=5)
        window = Telea(radius=radius, large_image="window")
        windows = hole_windows(mask, window.window_margin_px)
        floor = bare_windows(image, mask, windows, radius)
        figures = path_vs_full(runs, image, mask, window, cv2_in_windows_only=floor)
        # The window path saves the per-image cost, never the per-hole-pixel work.
        ceiling = round(figures["full"] / figures["cv2_in_windows_only"], 2)
        result[name] = {
            "holes": f"8 disks of radius {radii[0]}-{radii[1]} px",
            "windows": len(windows),
            **figures,
            "speedup_ceiling": ceiling,
        }
    large = blob_mask(1536, 2048, 0.10, seed=6)
    result["downscale_10pct_hole"] = path_vs_full(
        runs, image, large, Telea(radius=RADIUS, large_image="downscale")
    )
    return result


def targets(g4_result: dict, g4b_result: dict) -> dict[str, dict[str, object]]:
    """Pass/fail of each figure against PERFORMANCE.md's targets."""
    out: dict[str, dict[str, object]] = {}
    for kind in ("telea", "navier_stokes"):
        value = g4_result[kind]["ratio"]
        out[f"G4 {kind}"] = {"value": value, "target": f"<= {G4_MAX_RATIO}"}
        out[f"G4 {kind}"]["pass"] = value <= G4_MAX_RATIO
    for path in [name for name, _, _ in WINDOW_CASES] + ["downscale_10pct_hole"]:
        value = g4b_result[path]["speedup"]
        out[f"G4b {path}"] = {"value": value, "target": f">= {G4B_MIN_SPEEDUP}"}
        out[f"G4b {path}"]["pass"] = value >= G4B_MIN_SPEEDUP
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="interleaved rounds (>= 3)")
    args = parser.parse_args()
    runs = max(args.runs, 3)
    # One thread per process, as each pipeline worker runs: the figures are per core.
    cv2.setNumThreads(1)
    started = time.perf_counter()
    g4_result, g4b_result = g4(runs), g4b(runs)
    report = {
        "benchmark": "classical",
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "runs": runs,
        "statistic": "median of interleaved runs, ms",
        "G4": g4_result,
        "G4b": g4b_result,
        "targets": targets(g4_result, g4b_result),
        "total_s": 0.0,
    }
    report["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
