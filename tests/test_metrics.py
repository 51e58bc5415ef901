"""Image-quality metrics against known values: per-image scores and feature-set distances."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_like

from inpaint_ops.distribution import (
    FeatureExtractor,
    frechet_distance,
    kernel_inception_distance,
    make_random_extractor,
    paired_unpaired_ids,
)
from inpaint_ops.metrics import (
    area_bin,
    is_blank,
    masked_psnr,
    masked_ssim,
    mean_pairwise_ms_ssim,
    ms_ssim,
    seam_score,
    ssim_map,
)

H, W = 96, 128


def box_mask(top: int = 30, left: int = 40, height: int = 30, width: int = 50) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[top : top + height, left : left + width] = True
    return mask


def noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def exact_gaussian(mean: np.ndarray, std: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n samples whose sample mean is exactly ``mean`` and sample covariance ``diag(std^2)``."""
    z = np.random.default_rng(seed).normal(size=(n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z * std + mean


# --- per-image metrics ---------------------------------------------------------------------


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_identical_images_score_perfectly(channels: int, dtype: type) -> None:
    image = photo_like(H, W, seed=1, channels=channels).astype(dtype)
    image *= 257 if dtype == np.uint16 else 1  # spans the full uint16 range
    assert masked_psnr(image, image.copy(), box_mask()) == float("inf")
    assert masked_ssim(image, image.copy(), box_mask()) == pytest.approx(1.0, abs=1e-12)
    assert ms_ssim(image, image.copy()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(("dtype", "peak", "shift"), [(np.uint8, 255, 7), (np.uint16, 65535, 1000)])
def test_constant_shift_in_the_hole_gives_the_closed_form_psnr(
    dtype: type, peak: int, shift: int
) -> None:
    rng = np.random.default_rng(2)
    reference = rng.integers(0, peak - shift, size=(H, W, 3), endpoint=True).astype(dtype)
    mask = box_mask()
    filled = reference.copy()
    filled[mask] += dtype(shift)  # no clipping: every value is at most peak - shift
    # Pixels outside the hole are scrambled to show they are not scored.
    filled[~mask] = rng.integers(0, peak, size=(int((~mask).sum()), 3)).astype(dtype)
    assert masked_psnr(reference, filled, mask) == pytest.approx(
        20 * math.log10(peak / shift), abs=1e-6
    )


def test_ms_ssim_falls_as_noise_grows() -> None:
    image = photo_like(H, W, seed=3)
    light, heavy = ms_ssim(image, noisy(image, 10)), ms_ssim(image, noisy(image, 30))
    assert 1.0 > light > heavy > 0.0


def test_ms_ssim_of_a_tiny_image_is_plain_mean_ssim() -> None:
    # Below 22 px only one scale fits, whose term is the mean of the SSIM map.
    image = photo_like(20, 20, seed=4)
    other = noisy(image, 20)
    assert ms_ssim(image, other) == pytest.approx(float(ssim_map(image, other).mean()), rel=1e-12)


def test_ms_ssim_rejects_images_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        ms_ssim(photo_like(H, W, seed=5), photo_like(H, W + 2, seed=5))


def test_mean_pairwise_ms_ssim_measures_diversity() -> None:
    image = photo_like(H, W, seed=6)
    assert mean_pairwise_ms_ssim([image, image.copy(), image.copy()]) == pytest.approx(
        1.0, abs=1e-12
    )
    variants = [noisy(image, 25, seed) for seed in range(3)]
    assert mean_pairwise_ms_ssim(variants) < 0.9
    assert math.isnan(mean_pairwise_ms_ssim([image]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seam_score_is_near_one_for_true_pixels_and_high_for_a_flat_patch(seed: int) -> None:
    image, mask = photo_like(H, W, seed=seed), box_mask()
    assert 0.8 < seam_score(image, mask) < 1.25
    patched = image.copy()
    patched[mask] = 0
    assert seam_score(patched, mask) > 5.0


def test_seam_score_is_nan_without_a_boundary() -> None:
    image = photo_like(H, W, seed=7)
    assert math.isnan(seam_score(image, np.zeros((H, W), bool)))
    assert math.isnan(seam_score(image, np.ones((H, W), bool)))


def test_is_blank() -> None:
    assert is_blank(np.zeros((H, W, 3), np.uint8))
    assert is_blank(np.full((H, W, 3), (10, 200, 30), np.uint8))
    assert not is_blank(photo_like(H, W, seed=8))
    almost = np.zeros((H, W), np.uint16)
    almost[5, 5] = 2
    assert not is_blank(almost, tolerance=1)
    assert is_blank(almost, tolerance=2)


@pytest.mark.parametrize(
    ("fraction", "label"),
    [
        (0.0, "0-10%"),
        (0.0999, "0-10%"),
        (0.1, "10-20%"),
        (1 - 0.9, "10-20%"),  # 0.09999999999999998 in floating point
        (0.7, "70-80%"),
        (0.95, "90-100%"),
        (1.0, "90-100%"),
    ],
)
def test_area_bin(fraction: float, label: str) -> None:
    assert area_bin(fraction) == label


@pytest.mark.parametrize("fraction", [-0.01, 1.01, float("nan")])
def test_area_bin_rejects_fractions_outside_zero_one(fraction: float) -> None:
    with pytest.raises(ValueError, match="within"):
        area_bin(fraction)


# --- feature-set distances -----------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero() -> None:
    x = np.random.default_rng(10).normal(size=(400, 8)) * 3.0
    scale = np.trace(np.cov(x, rowvar=False))
    assert abs(frechet_distance(x, x)) < 1e-9 * scale


def test_frechet_distance_matches_the_gaussian_closed_form() -> None:
    mean_a, std_a = np.zeros(4), np.ones(4)
    mean_b, std_b = np.array([1.0, -2.0, 0.5, 0.0]), np.array([1.0, 2.0, 0.5, 3.0])
    a, b = exact_gaussian(mean_a, std_a, 300, seed=11), exact_gaussian(mean_b, std_b, 200, seed=12)
    # For diagonal covariances: |mu_a - mu_b|^2 + sum (std_a - std_b)^2 = 5.25 + 5.25.
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((std_a - std_b) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, a + mean_b) == pytest.approx(np.sum(mean_b**2), rel=1e-9)


def test_frechet_distance_survives_singular_covariances() -> None:
    x = np.random.default_rng(13).normal(size=(5, 8))  # fewer samples than dimensions
    assert abs(frechet_distance(x, x)) < 1e-5
    assert frechet_distance(x, x + 1.0) == pytest.approx(8.0, rel=1e-4)


def test_kernel_inception_distance() -> None:
    x = np.random.default_rng(14).normal(size=(300, 8))
    same_mean, same_std = kernel_inception_distance(x, x, subsets=20, subset_size=200)
    shifted_mean, _ = kernel_inception_distance(x, x + 0.5, subsets=20, subset_size=200)
    assert abs(same_mean) < 0.1 * shifted_mean
    assert shifted_mean > 0.5
    assert same_std > 0  # subsets differ from round to round
    again = kernel_inception_distance(x, x + 0.5, subsets=20, subset_size=200)
    assert again[0] == shifted_mean  # the seed fixes the subsets


def test_ids_cannot_tell_copies_apart() -> None:
    real = np.random.default_rng(15).normal(size=(200, 16))
    p_ids, u_ids = paired_unpaired_ids(real, real.copy())
    assert u_ids >= 0.3
    assert p_ids >= 0.3


def test_ids_of_well_separated_fakes_are_zero() -> None:
    rng = np.random.default_rng(16)
    real = rng.normal(size=(200, 16))
    fake = rng.normal(size=(200, 16)) + 4.0
    assert paired_unpaired_ids(real, fake) == (0.0, 0.0)


def test_ids_needs_pairs() -> None:
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match="pairs"):
        paired_unpaired_ids(x, x[:3])


# --- feature extractor ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    path = tmp_path_factory.mktemp("extractor") / "random.pt"
    return str(path), make_random_extractor(path, dim=64, input_size=64, seed=0)


def mixed_images() -> list[np.ndarray]:
    """Five images of different sizes, dtypes and channel counts."""
    rgb = photo_like(40, 50, seed=20)
    return [
        rgb,
        photo_like(100, 80, seed=21).astype(np.uint16) * 257,
        photo_like(30, 30, seed=22, channels=1)[:, :, 0],
        photo_like(70, 90, seed=23, channels=1).astype(np.uint16) * 257,
        np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
    ]


def test_features_are_deterministic_and_identified(extractor_file: tuple[str, str]) -> None:
    path, sha = extractor_file
    first = FeatureExtractor(path, input_size=64, batch_size=2)
    second = FeatureExtractor(path, input_size=64, batch_size=2)
    features = first.features(mixed_images())
    assert features.shape == (5, 64)
    assert features.dtype == np.float64
    np.testing.assert_array_equal(features, second.features(mixed_images()))
    # Batching changes only float32 rounding.
    one_batch = FeatureExtractor(path, input_size=64, batch_size=8).features(mixed_images())
    np.testing.assert_allclose(one_batch, features, rtol=1e-4, atol=1e-6)
    with open(path, "rb") as stream:
        assert first.sha256 == sha == hashlib.sha256(stream.read()).hexdigest()


def test_features_ignore_dtype_and_grey_encoding(extractor_file: tuple[str, str]) -> None:
    extractor = FeatureExtractor(extractor_file[0], input_size=64)
    grey = photo_like(60, 60, seed=24, channels=1)
    rgb = np.repeat(grey, 3, axis=2)
    features = extractor.features([grey[:, :, 0], rgb, rgb.astype(np.uint16) * 257])
    np.testing.assert_allclose(features[1:], features[[0, 0]], rtol=1e-5, atol=1e-7)
    assert not np.allclose(features[0], extractor.features([photo_like(60, 60, seed=25)])[0])


def test_frechet_distance_through_the_extractor(extractor_file: tuple[str, str]) -> None:
    extractor = FeatureExtractor(extractor_file[0], input_size=64)
    features = extractor.features([photo_like(48, 64, seed=s) for s in range(24)])
    scale = np.trace(np.cov(features, rowvar=False))
    assert scale > 0
    assert abs(frechet_distance(features, features)) < 1e-6 * scale


def test_extractor_rejects_bad_files(tmp_path: Path) -> None:
    not_script = tmp_path / "weights.pt"
    not_script.write_bytes(b"not a TorchScript archive")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        FeatureExtractor(not_script)
    with pytest.raises(ValueError, match="not found"):
        FeatureExtractor(tmp_path / "missing.pt")


def test_extractor_rejects_an_output_without_rows(tmp_path: Path) -> None:
    import torch

    class Total(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum()

    path = tmp_path / "total.pt"
    torch.jit.script(Total()).save(str(path))
    with pytest.raises(RuntimeError, match="one row per image"):
        FeatureExtractor(path, input_size=16).features([photo_like(20, 20, seed=26)])
