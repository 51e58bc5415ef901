"""Behaviour of each mask generator: what it erases, how much, and how options change it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from inpaint_ops.masks import (
    Boxes,
    CloudRegions,
    Damage,
    FromFiles,
    MaskContext,
    ProductSlots,
    combine,
)
from inpaint_ops.masks.product_slots import shelf_rows

SEEDS = range(6)


def _image(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 128, dtype=np.uint8)


def _shelf(rows: int = 3, columns: int = 5) -> tuple[np.ndarray, MaskContext]:
    """A shelf photo's boxes: 20x30 px products, 16 px apart, slightly uneven like real facings."""
    rng = np.random.default_rng(99)
    boxes = []
    for r in range(rows):
        for c in range(columns):
            x1, y1 = 10 + 36 * c + rng.uniform(-2, 2), 10 + 46 * r + rng.uniform(-3, 3)
            boxes.append((x1, y1, x1 + 20, y1 + 30 + rng.uniform(-2, 2)))
    order = rng.permutation(len(boxes))  # annotation order must not matter
    return _image(160, 200), MaskContext(boxes=np.array(boxes)[order])


def _covered(mask: np.ndarray, box: np.ndarray, grow: int = 0) -> np.ndarray:
    x1, y1, x2, y2 = box
    return mask[
        max(int(np.floor(y1)) - grow, 0) : int(np.ceil(y2)) + grow,
        max(int(np.floor(x1)) - grow, 0) : int(np.ceil(x2)) + grow,
    ]


@pytest.mark.parametrize("margin, dilate", [(0, 0), (2, 3)])
def test_product_slots_erases_exactly_k_boxes_and_nothing_else(margin: int, dilate: int) -> None:
    image, context = _shelf()
    spec = ProductSlots(count=(3, 3), margin_px=margin, dilate_px=dilate)
    for seed in SEEDS:
        result = spec.generate(image, context, np.random.default_rng(seed))
        assert len(result.removed) == 3 and result.info == {"k": 3}
        assert list(result.removed) == sorted(set(result.removed))
        expected = np.zeros_like(result.mask)
        for index, box in enumerate(context.boxes):
            if index in result.removed:
                assert _covered(result.mask, box, grow=margin).all()
                _covered(expected, box, grow=margin + dilate)[...] = True
            else:
                assert not _covered(result.mask, box).any()
        assert not (result.mask & ~expected).any(), "mask reaches beyond the grown boxes"


def test_product_slots_fraction_is_a_share_of_the_boxes() -> None:
    image, context = _shelf()  # 15 boxes
    result = ProductSlots(fraction=(0.2, 0.2)).generate(image, context, np.random.default_rng(0))
    assert len(result.removed) == 3
    one = ProductSlots(fraction=(0.0, 0.01)).generate(image, context, np.random.default_rng(0))
    assert len(one.removed) == 1  # at least one box, or the item would be quarantined


def test_product_slots_adjacent_takes_neighbouring_facings_on_one_row() -> None:
    image, context = _shelf()
    rows = shelf_rows(context.boxes, np.arange(len(context.boxes)))
    assert sorted(len(row) for row in rows) == [5, 5, 5]
    centre_x = (context.boxes[:, 0] + context.boxes[:, 2]) / 2
    ordered_rows = [sorted(row, key=lambda i: centre_x[i]) for row in rows]
    spec = ProductSlots(count=(3, 3), adjacent=True)
    rows_hit = set()
    for seed in range(12):
        removed = spec.generate(image, context, np.random.default_rng(seed)).removed
        row = next(r for r, members in enumerate(ordered_rows) if removed[0] in members)
        positions = sorted(ordered_rows[row].index(i) for i in removed)
        assert positions == list(range(positions[0], positions[0] + 3)), "not neighbours"
        rows_hit.add(row)
    assert len(rows_hit) > 1, "the row should be chosen at random"


def test_product_slots_adjacent_caps_k_at_the_longest_row() -> None:
    image, context = _shelf(rows=2, columns=3)
    result = ProductSlots(count=(5, 5), adjacent=True).generate(
        image, context, np.random.default_rng(0)
    )
    assert len(result.removed) == 3


def test_product_slots_clips_to_the_image_and_skips_unusable_boxes() -> None:
    boxes = np.array([[-10, -5, 15, 12], [50, 50, 40, 60], [np.nan, 0, 5, 5], [300, 0, 310, 9]])
    context = MaskContext(boxes=boxes)
    result = ProductSlots(count=(4, 4), margin_px=0).generate(
        _image(40, 60), context, np.random.default_rng(0)
    )
    assert result.removed == (0,)
    assert result.mask[:12, :15].all() and result.mask.sum() == 12 * 15


def test_product_slots_without_boxes_gives_an_empty_mask() -> None:
    result = ProductSlots(count=(1, 2)).generate(
        _image(30, 40), MaskContext(), np.random.default_rng(0)
    )
    assert not result.mask.any() and result.removed == () and result.mask.shape == (30, 40)


@pytest.mark.parametrize(
    "params",
    [{"count": (3, 1)}, {}, {"count": (1, 2), "fraction": (0.1, 0.2)}, {"fraction": (0.2, 1.5)}],
)
def test_product_slots_rejects_bad_parameters(params: dict) -> None:
    with pytest.raises(ValidationError):
        ProductSlots(**params)


def test_cloud_coverage_hits_the_drawn_target() -> None:
    spec = CloudRegions(coverage=(0.1, 0.6), scale_px=64, soft_edge_px=3)
    for seed in SEEDS:
        result = spec.generate(_image(200, 300), MaskContext(), np.random.default_rng(seed))
        assert 0.1 <= result.info["target"] <= 0.6
        assert abs(result.mask.mean() - result.info["target"]) < 0.01
        assert result.info["coverage"] == pytest.approx(result.mask.mean(), abs=1e-6)


def test_cloud_blobs_are_coarser_with_a_larger_scale() -> None:
    def edge_share(scale: float) -> float:
        spec = CloudRegions(coverage=(0.4, 0.4), scale_px=scale, octaves=3)
        mask = spec.generate(_image(256, 256), MaskContext(), np.random.default_rng(3)).mask
        return float((mask[:, 1:] != mask[:, :-1]).mean())

    assert edge_share(128) < edge_share(16) / 2


def _stroke_width(preset: str) -> float:
    """Mean distance to the nearest background pixel, which is proportional to stroke width."""
    spec = Damage(strokes=preset)
    distances = []
    for seed in SEEDS:
        mask = spec.generate(_image(256, 256), MaskContext(), np.random.default_rng(seed)).mask
        padded = np.pad(mask, 1).astype(np.uint8)
        distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        distances.append(distance[1:-1, 1:-1][mask].mean())
    return float(np.mean(distances))


def test_stroke_presets_differ_in_width() -> None:
    thick, medium, thin = (_stroke_width(p) for p in ("thick", "medium", "thin"))
    assert thick > 1.5 * medium > 1.5 * 1.5 * thin


@pytest.mark.parametrize("size", [(64, 96), (300, 200)])
def test_free_form_hole_ratio_lands_in_range(size: tuple[int, int]) -> None:
    spec = Damage(free_form={"hole_ratio": (0.2, 0.4)})
    for seed in SEEDS:
        result = spec.generate(_image(*size), MaskContext(), np.random.default_rng(seed))
        assert 0.2 <= result.mask.mean() <= 0.4
        assert result.info["hole_ratio"] == pytest.approx(result.mask.mean(), abs=1e-6)
        assert result.mask.mean() >= result.info["hole_target"] - 1e-6


def test_damage_sizes_scale_with_the_image() -> None:
    spec = Damage(blotches=(2, 2), strokes="medium")

    def mean_ratio(side: int) -> float:
        image = _image(side, side)
        ratios = [spec.generate(image, MaskContext(), np.random.default_rng(s)) for s in SEEDS]
        return float(np.mean([r.mask.mean() for r in ratios]))

    small, large = mean_ratio(128), mean_ratio(1024)
    assert 0.7 < small / large < 1.4


def test_damage_scratches_are_long_and_thin() -> None:
    spec = Damage(scratches=(1, 1))
    for seed in SEEDS:
        mask = spec.generate(_image(256, 256), MaskContext(), np.random.default_rng(seed)).mask
        ys, xs = np.nonzero(mask)
        assert max(np.ptp(xs), np.ptp(ys)) > 40
        padded = np.pad(mask, 1).astype(np.uint8)  # the image border is not background to cv2
        distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        assert distance.max() <= 2.5  # at most about 3 px wide everywhere


def test_torn_edge_and_folded_corner_hug_the_border() -> None:
    spec = Damage(torn_edge_p=1.0)
    for seed in SEEDS:
        result = spec.generate(_image(90, 120), MaskContext(), np.random.default_rng(seed))
        edge = result.info["torn_edge"]
        lines = {"top": (0, -1), "bottom": (-1, 0), "left": (0, -1), "right": (-1, 0)}[edge]
        mask = result.mask if edge in ("top", "bottom") else result.mask.T
        assert mask[lines[0]].all() and not mask[lines[1]].any()

    corner = Damage(folded_corner_p=1.0)
    for seed in SEEDS:
        result = corner.generate(_image(90, 120), MaskContext(), np.random.default_rng(seed))
        name = result.info["folded_corner"]
        y, x = (0 if "top" in name else -1), (0 if "left" in name else -1)
        assert result.mask[y, x] and not result.mask[-1 - y, -1 - x]


def test_damage_needs_something_enabled_and_rejects_bad_presets() -> None:
    with pytest.raises(ValidationError, match="enable at least one"):
        Damage(scratches=(0, 0))
    with pytest.raises(ValidationError):
        Damage(strokes="huge")
    with pytest.raises(ValidationError):
        Damage(free_form={"hole_ratio": (0.5, 0.95)})


def test_boxes_count_size_and_placement() -> None:
    spec = Boxes(count=(2, 2), size=(0.2, 0.3))
    for seed in SEEDS:
        result = spec.generate(_image(100, 150), MaskContext(), np.random.default_rng(seed))
        assert len(result.info["boxes"]) == 2
        expected = np.zeros((100, 150), dtype=bool)
        for x1, y1, x2, y2 in result.info["boxes"]:
            assert 0 <= x1 < x2 <= 150 and 0 <= y1 < y2 <= 100
            assert 20 <= x2 - x1 <= 30 and 20 <= y2 - y1 <= 30
            expected[y1:y2, x1:x2] = True
        assert np.array_equal(result.mask, expected)


def _user(mask: np.ndarray, image_id: str = "a/b.jpg") -> MaskContext:
    return MaskContext(image_id=image_id, user_mask=mask)


def test_from_files_polarity_normalisation() -> None:
    hole = np.zeros((40, 60), dtype=bool)
    hole[5:15, 10:30] = True
    black_fill = np.where(hole, 0, 255).astype(np.uint8)  # white background, black hole
    white_fill = np.where(hole, 255, 0).astype(np.uint8)
    image = _image(40, 60)
    for polarity, user, inverted in [
        ("auto", black_fill, True),
        ("auto", white_fill, False),
        ("black_fill", black_fill, True),
        ("white_fill", white_fill, False),
    ]:
        result = FromFiles(uri="m", polarity=polarity).generate(
            image, _user(user), np.random.default_rng(0)
        )
        assert np.array_equal(result.mask, hole), polarity
        assert result.info["inverted"] is inverted
    forced = FromFiles(uri="m", polarity="white_fill").generate(
        image, _user(black_fill), np.random.default_rng(0)
    )
    assert np.array_equal(forced.mask, ~hole)


def test_from_files_reads_label_gray16_and_colour_masks() -> None:
    hole = np.zeros((40, 60), dtype=bool)
    hole[20:30, 5:25] = True
    ramp = np.where(hole, 40000, 20000).astype(np.uint16)  # not two-level: threshold at 32767
    colour = np.zeros((40, 60, 3), dtype=np.uint8)
    colour[hole] = (255, 0, 0)  # a red brush on black
    for user in [hole.astype(np.uint8), ramp, colour, hole[:, :, None], hole]:
        result = FromFiles(uri="m").generate(_image(40, 60), _user(user), np.random.default_rng(0))
        assert np.array_equal(result.mask, hole), user.dtype
        assert result.mask is not user


def test_from_files_errors_name_the_problem() -> None:
    spec = FromFiles(uri="m")
    with pytest.raises(ValueError, match="mask for a/b.jpg is 32x24 .* image is 60x40"):
        spec.generate(
            _image(40, 60), _user(np.zeros((24, 32), dtype=np.uint8)), np.random.default_rng(0)
        )
    with pytest.raises(ValueError, match="no mask file for a/b.jpg"):
        spec.generate(_image(40, 60), _user(None), np.random.default_rng(0))
    assert spec.mask_key("shelf/x.y/b.jpg") == "shelf/x.y/b.png"
    assert FromFiles(uri="m", suffix="_mask.png").mask_key("b.tif") == "b_mask.png"
    with pytest.raises(ValidationError):
        FromFiles(uri="m", suffix="/../x.png")


def test_combine_is_the_union_with_independent_child_generators() -> None:
    image, context = _shelf()
    clouds = CloudRegions(coverage=(0.1, 0.1), scale_px=32)
    specs = [ProductSlots(count=(2, 2)), Boxes(count=(1, 1)), clouds]
    result = combine(specs, image, context, np.random.default_rng(5))

    parent = np.random.default_rng(5)
    seeds = [parent.integers(2**63) for _ in specs]
    parts = [
        s.generate(image, context, np.random.Generator(np.random.PCG64(seed)))
        for s, seed in zip(specs, seeds, strict=True)
    ]
    assert np.array_equal(result.mask, parts[0].mask | parts[1].mask | parts[2].mask)
    assert result.removed == parts[0].removed
    assert [g["kind"] for g in result.info["generators"]] == [s.kind for s in specs]

    # Changing the first generator's parameters must not change what the others draw.
    other = combine(
        [ProductSlots(count=(4, 4)), *specs[1:]], image, context, np.random.default_rng(5)
    )
    assert other.info["generators"][1:] == result.info["generators"][1:]
    with pytest.raises(ValueError):
        combine([], image, context, np.random.default_rng(0))
