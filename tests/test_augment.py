import numpy as np
import pytest

from inpaint_ops.augment import build_augmenter


def image_and_mask():
    image = np.zeros((40, 60, 3), np.uint8)
    image[:, :10] = 200
    mask = np.zeros((40, 60), bool)
    mask[5:15, 2:8] = True
    return image, mask


def test_flip_moves_image_mask_and_boxes_together():
    augment = build_augmenter([{"HorizontalFlip": {"p": 1.0}}])
    image, mask = image_and_mask()
    out = augment(
        image, mask, np.array([[0.0, 0.0, 10.0, 40.0]]), ("shelf",), np.random.default_rng(0)
    )
    assert (out.image[:, -10:] == 200).all() and (out.image[:, :-10] == 0).all()
    assert out.mask[5:15, 52:58].all() and out.mask.sum() == mask.sum()
    np.testing.assert_allclose(out.boxes, [[50.0, 0.0, 60.0, 40.0]], atol=1e-4)
    assert out.labels == ("shelf",)
    assert out.params[0]["transform"] == "HorizontalFlip"


def test_same_rng_same_result_other_rng_differs():
    augment = build_augmenter([{"RandomBrightnessContrast": {"p": 1.0}}])
    image, mask = image_and_mask()
    boxes = np.zeros((0, 4))
    a = augment(image, mask, boxes, (), np.random.default_rng(1))
    b = augment(image, mask, boxes, (), np.random.default_rng(1))
    c = augment(image, mask, boxes, (), np.random.default_rng(2))
    assert np.array_equal(a.image, b.image) and a.params == b.params
    assert not np.array_equal(a.image, c.image)


def test_sixteen_bit_gray_stays_sixteen_bit():
    augment = build_augmenter([{"HorizontalFlip": {"p": 1.0}}])
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))[:, :, None]
    out = augment(ramp, np.ones((8, 64), bool), np.zeros((0, 4)), (), np.random.default_rng(0))
    assert out.image.dtype == np.uint16 and out.image.shape == ramp.shape
    assert np.array_equal(out.image[:, ::-1], ramp)


def test_empty_list_means_no_augmenter():
    assert build_augmenter([]) is None


@pytest.mark.parametrize(
    "steps, message",
    [
        ([{"Flipx": {}}], "not an albumentations transform"),
        ([{"HorizontalFlip": {"q": 1}}], "not valid"),
    ],
)
def test_typos_are_refused(steps, message):
    with pytest.raises(ValueError, match=message):
        build_augmenter(steps)
