"""composite, leak and mask_fraction against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from inpaint_ops.composite import composite, leak, mask_fraction


def _mask(height: int, width: int, points: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for point in points:
        mask[point] = True
    return mask


def test_composite_takes_the_fill_inside_and_the_original_outside() -> None:
    original = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    filled = np.full((3, 4, 1), 200, dtype=np.uint8)
    mask = _mask(3, 4, [(0, 1), (2, 3)])
    out = composite(original, filled, mask)
    expected = original.copy()
    expected[0, 1] = expected[2, 3] = 200
    assert np.array_equal(out, expected) and out.dtype == np.uint8


def test_composite_keeps_uint16_colour_and_returns_a_new_array() -> None:
    original = np.full((2, 2, 3), 1000, dtype=np.uint16)
    filled = np.full((2, 2, 3), 60000, dtype=np.uint16)
    original_before, filled_before = original.copy(), filled.copy()
    out = composite(original, filled, _mask(2, 2, [(1, 0)]))
    assert out.dtype == np.uint16
    assert out[1, 0].tolist() == [60000] * 3 and out[0, 0].tolist() == [1000] * 3
    assert out is not original and out is not filled
    assert np.array_equal(original, original_before) and np.array_equal(filled, filled_before)


@pytest.mark.parametrize(
    ("original", "filled", "mask", "message"),
    [
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 1), np.uint8), None, "does not match"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint16), None, "does not match"),
        (np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), None, r"\(H, W, C\)"),
        (np.zeros((2, 2, 3), np.int32), np.zeros((2, 2, 3), np.int32), None, "uint8 or uint16"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), "uint8", "bool"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2, 3), np.uint8), "3x2", "does not match"),
    ],
    ids=["channels", "dtype", "2-d", "int32", "mask dtype", "mask shape"],
)
def test_composite_and_leak_reject_mismatched_inputs(
    original: np.ndarray, filled: np.ndarray, mask: str | None, message: str
) -> None:
    masks = {
        None: np.zeros((2, 2), bool),
        "uint8": np.zeros((2, 2), np.uint8),
        "3x2": np.zeros((3, 2), bool),
    }
    with pytest.raises(ValueError, match=message):
        composite(original, filled, masks[mask])
    with pytest.raises(ValueError, match=message):
        leak(original, filled, masks[mask])


def test_leak_counts_changes_outside_the_mask_only() -> None:
    original = np.full((3, 4, 3), 100, dtype=np.uint8)
    filled = original.copy()
    mask = _mask(3, 4, [(0, 0), (0, 1)])
    filled[0, 0] = 0  # inside the mask: not a leak
    filled[1, 1, 2] = 107  # one channel of one unmasked pixel, +7
    filled[2, 3] = 97  # every channel of another, -3
    assert leak(original, filled, mask) == {
        "max_abs": 7,
        "changed_fraction": pytest.approx(2 / 10),
    }


def test_leak_does_not_wrap_around_for_unsigned_values() -> None:
    original = np.full((1, 2, 1), 10, dtype=np.uint16)
    filled = np.array([[[5], [65535]]], dtype=np.uint16)
    result = leak(original, filled, _mask(1, 2, []))
    assert result == {"max_abs": 65525, "changed_fraction": 1.0}


def test_leak_is_zero_for_a_clean_fill_and_for_a_full_mask() -> None:
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    clean = {"max_abs": 0, "changed_fraction": 0.0}
    assert leak(image, image.copy(), _mask(2, 4, [(1, 1)])) == clean
    assert leak(image, 255 - image, np.ones((2, 4), bool)) == clean


def test_mask_fraction() -> None:
    assert mask_fraction(_mask(3, 4, [(0, 0), (1, 2), (2, 3)])) == pytest.approx(0.25)
    assert mask_fraction(np.ones((5, 5), bool)) == 1.0
    assert mask_fraction(np.zeros((5, 5), bool)) == 0.0
    assert mask_fraction(np.zeros((0, 5), bool)) == 0.0
    with pytest.raises(ValueError, match="bool"):
        mask_fraction(np.ones((5, 5), np.uint8))
    with pytest.raises(ValueError, match="bool"):
        mask_fraction(np.ones((5, 5, 1), bool))
