"""Our decode + encode against bare OpenCV on the same bytes (target G5: at most 1.2x the time).

Prints one JSON document. Both sides run on one thread, interleaved, and the figure is the median
of several runs of many iterations, so drift on a shared machine hits both sides alike.

    python benchmarks/codec.py [--runs 7] [--iterations 40]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import PIL

from pipelines.codec import decode_image, encode_image

TARGET_G5 = 1.2


def astronaut_jpeg(quality: int) -> bytes:
    """A 1024 x 768 photo (scikit-image's astronaut, resized) as JPEG bytes."""
    from skimage import data  # the "samples" extra; imported here so the module stays light

    photo = cv2.resize(data.astronaut(), (1024, 768), interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", photo[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, "could not build the benchmark JPEG"
    return buffer.tobytes()


def ours(source: bytes, fmt: str, quality: int) -> bytes:
    return encode_image(decode_image(source), fmt, quality=quality)


def bare_cv2(source: bytes, fmt: str, quality: int) -> bytes:
    pixels = cv2.imdecode(np.frombuffer(source, np.uint8), cv2.IMREAD_COLOR)
    params = {
        "jpeg": [cv2.IMWRITE_JPEG_QUALITY, quality],
        "png": [cv2.IMWRITE_PNG_COMPRESSION, 1],
    }[fmt]
    return cv2.imencode(".jpg" if fmt == "jpeg" else ".png", pixels, params)[1].tobytes()


def per_call_ms(fn: Callable[[], object], iterations: int) -> float:
    start = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - start) / iterations * 1e3


def compare(source: bytes, fmt: str, quality: int, runs: int, iterations: int) -> dict:
    """Median per-call time of ours and bare cv2, alternating which goes first each run."""
    sides = {
        "ours": lambda: ours(source, fmt, quality),
        "bare_cv2": lambda: bare_cv2(source, fmt, quality),
    }
    for fn in sides.values():
        fn()  # warm up: plugin registration, first allocations
    times: dict[str, list[float]] = {name: [] for name in sides}
    for run in range(runs):
        order = list(sides) if run % 2 == 0 else list(reversed(sides))
        for name in order:
            times[name].append(per_call_ms(sides[name], iterations))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "ours_ms": round(medians["ours"], 3),
        "bare_cv2_ms": round(medians["bare_cv2"], 3),
        "ratio": round(medians["ours"] / medians["bare_cv2"], 3),
        "same_output_bytes": ours(source, fmt, quality) == bare_cv2(source, fmt, quality),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--quality", type=int, default=92)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # workers pin OpenCV to one thread; compare like with like
    source = astronaut_jpeg(args.quality)
    jpeg = compare(source, "jpeg", args.quality, args.runs, args.iterations)
    # PNG output (level 1) for context: dominated by zlib, not by our code.
    png = compare(source, "png", args.quality, max(3, args.runs // 2), max(3, args.iterations // 8))
    report = {
        "benchmark": "codec decode+encode vs bare cv2.imdecode+cv2.imencode, same bytes",
        "image": {"source": "skimage astronaut", "size": [1024, 768], "jpeg_bytes": len(source)},
        "method": f"median of {args.runs} interleaved runs x {args.iterations} calls, 1 thread",
        "jpeg_to_jpeg": jpeg,
        "jpeg_to_png_level1": png,
        "target_G5": {"max_ratio": TARGET_G5, "pass": jpeg["ratio"] <= TARGET_G5},
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "opencv": cv2.__version__,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
