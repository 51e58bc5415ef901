"""Crop-around-mask: windows that hold every hole, never overlap, and paste back only holes."""

from __future__ import annotations

import time

import numpy as np
import pytest

from inpaint_ops.inpainters import crops
from inpaint_ops.inpainters.neural import WindowedFill, from_float_rgb, to_float_rgb


def _covered(mask: np.ndarray, planned: list[crops.Crop]) -> np.ndarray:
    seen = np.zeros_like(mask)
    h, w = mask.shape
    for c in planned:
        seen[max(c.top, 0) : min(c.top + c.side, h), max(c.left, 0) : min(c.left + c.side, w)] = (
            True
        )
    return seen


def test_small_holes_in_a_large_image_get_native_resolution_windows() -> None:
    mask = np.zeros((3000, 4000), bool)
    mask[100:140, 200:260] = True
    mask[2500:2600, 3500:3550] = True
    planned = crops.plan_crops(mask, resolution=256, context=0.5)
    assert len(planned) == 2
    for c in planned:  # never upsampled; no more context than asked for
        group = max(c.hole[0].stop - c.hole[0].start, c.hole[1].stop - c.hole[1].start)
        assert c.side == max(256, 2 * group)
    assert min(c.side for c in planned) == 256
    assert not (mask & ~_covered(mask, planned)).any()
    assert all(c.top >= 0 and c.top + c.side <= 3000 for c in planned)


def test_large_hole_gets_context_proportional_to_its_size() -> None:
    mask = np.zeros((3000, 4000), bool)
    mask[1000:1600, 1000:1400] = True  # 600 px tall
    (crop,) = crops.plan_crops(mask, resolution=256, context=0.5)
    rows, cols = crop.hole
    assert rows.start <= 1000 and rows.stop >= 1600  # the group holds the hole
    assert crop.side == 2 * (rows.stop - rows.start)  # and the window is twice the group
    assert crop.top <= rows.start and crop.top + crop.side >= rows.stop


def test_every_hole_pixel_is_pasted_by_exactly_one_window() -> None:
    rng = np.random.default_rng(3)
    mask = np.zeros((900, 1200), bool)
    for _ in range(25):
        y, x = rng.integers(0, 880), rng.integers(0, 1180)
        mask[y : y + 20, x : x + 20] = True
    mask[0, :] = mask[:, -1] = True  # thin holes along two borders
    planned = crops.plan_crops(mask, resolution=128, context=0.5)
    owners = np.zeros(mask.shape, np.int32)
    for c in planned:
        rows, cols = c.hole
        owners[rows, cols] += 1
        assert c.top <= rows.start and c.top + c.side >= rows.stop
        assert c.left <= cols.start and c.left + c.side >= cols.stop
    assert (owners[mask] == 1).all()


def test_dense_speckle_is_planned_quickly_into_few_windows() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((3000, 4000), bool)
    mask[rng.integers(0, 3000, 6000), rng.integers(0, 4000, 6000)] = True
    start = time.perf_counter()
    planned = crops.plan_crops(mask, resolution=256, context=0.5)
    assert time.perf_counter() - start < 2.0  # was tens of seconds with pairwise merging
    assert 1 <= len(planned) <= crops.MAX_WINDOWS


def test_window_larger_than_a_small_image_is_padded_by_reflection() -> None:
    image = np.arange(40 * 60 * 3, dtype=np.uint16).reshape(40, 60, 3)
    mask = np.zeros((40, 60), bool)
    mask[10:20, 10:30] = True
    (crop,) = crops.plan_crops(mask, resolution=256, context=0.5)
    assert crop.side == 60 and crop.top == -10  # the image's longer side, centred
    window = crops.take(image, crop)
    assert window.shape == (60, 60, 3) and window.dtype == np.uint16
    assert np.array_equal(window[10:50], image)


def test_hole_at_resolution_is_conservative() -> None:
    hole = np.zeros((512, 512), bool)
    hole[100, 100] = True  # one pixel: still a hole after a 4x shrink
    small = crops.hole_at_resolution(hole, 128)
    assert small.sum() == 1 and small[25, 25]


@pytest.mark.parametrize("dtype,channels", [(np.uint8, 3), (np.uint8, 1), (np.uint16, 1)])
def test_float_round_trip_is_exact(dtype: type, channels: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, np.iinfo(dtype).max, (17, 23, channels), endpoint=True).astype(dtype)
    back = from_float_rgb(to_float_rgb(image), np.dtype(dtype), channels)
    assert back.dtype == dtype and np.array_equal(back, image)


def _constant_model(value: float):
    calls: list[tuple[int, ...]] = []

    def forward(pixels: np.ndarray, holes: np.ndarray, seeds: list[int]) -> np.ndarray:
        calls.append(pixels.shape)
        assert pixels.dtype == np.float32 and holes.dtype == bool and len(seeds) == len(pixels)
        return np.full_like(pixels, value)

    return forward, calls


def test_windowed_fill_batches_windows_of_many_images_and_pastes_only_holes() -> None:
    forward, calls = _constant_model(1.0)
    fill = WindowedFill(forward, resolution=64, context=0.5, batch_size=3)
    rng = np.random.default_rng(1)
    jobs = []
    for h, w in [(300, 400), (200, 150), (64, 64)]:
        image = rng.integers(0, 200, (h, w, 3)).astype(np.uint8)
        mask = np.zeros((h, w), bool)
        mask[10:30, 20:40] = True
        mask[h - 30 : h - 10, w - 40 : w - 20] = True
        jobs.append((image, mask, np.random.default_rng(5)))
    outs = fill.many(jobs)
    assert sum(shape[0] for shape in calls) >= 3 and all(s[0] <= 3 for s in calls)
    assert all(s[1:] == (64, 64, 3) for s in calls)
    for (image, mask, _), out in zip(jobs, outs, strict=True):
        assert out.shape == image.shape and out.dtype == image.dtype
        assert np.array_equal(out[~mask], image[~mask])
        assert (out[mask] == 255).all()


def test_windowed_fill_seeds_depend_on_the_rng_not_the_batching() -> None:
    seen: list[list[int]] = []

    def forward(pixels: np.ndarray, holes: np.ndarray, seeds: list[int]) -> np.ndarray:
        seen.append(list(seeds))
        return pixels

    image = np.zeros((100, 100, 3), np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[5:10, 5:10] = mask[80:90, 80:90] = True
    for batch_size in (1, 8):
        WindowedFill(forward, 32, 0.5, batch_size)(image, mask, np.random.default_rng(9))
    one_by_one, together = seen[:-1], seen[-1]
    assert [s for batch in one_by_one for s in batch] == together


def test_fully_convolutional_models_fill_small_windows_near_their_own_size() -> None:
    forward, calls = _constant_model(0.5)
    fill = WindowedFill(forward, resolution=256, context=0.5, batch_size=4, native_multiple=64)
    assert [fill.model_size(s) for s in (20, 144, 271, 341, 4000)] == [64, 128, 256, 256, 256]
    fixed = WindowedFill(forward, resolution=256, context=0.5, batch_size=4)
    assert fixed.model_size(144) == 256  # one input size (diffusion): always the resolution
    image = np.zeros((144, 144, 3), np.uint8)
    mask = np.zeros((144, 144), bool)
    mask[40:90, 40:90] = True
    fill(image, mask, np.random.default_rng(0))
    assert calls == [(1, 128, 128, 3)]
