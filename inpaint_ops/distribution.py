"""Dataset-level realism: real and generated images compared as sets of feature vectors.

Features are float64 arrays of shape N x D, one row per image, e.g. the pooled activations of
an Inception network computed by ``FeatureExtractor`` from a TorchScript file the user supplies
(nothing is downloaded). ``make_random_extractor`` writes a tiny random network for tests and
for runs without real weights; its scores compare runs with each other, not with the
literature. torch is imported only when an extractor is made or loaded.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import cv2
import numpy as np
import scipy.linalg
import scipy.optimize

_SVM_C = 1.0


def _check_features(a: np.ndarray, b: np.ndarray, min_rows: int) -> None:
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 2 or len(x) < min_rows:
            raise ValueError(f"{name} must be N x D features with N >= {min_rows}: {x.shape}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrtm_product(cov_a: np.ndarray, cov_b: np.ndarray, eps: float) -> np.ndarray:
    """Real part of ``sqrtm(cov_a @ cov_b)``, retried with ``eps * I`` added to both if singular."""
    # Fewer rows than feature dimensions make singular covariances: expected, handled below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():
            offset = eps * np.eye(len(cov_a))
            root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError("sqrtm(cov_a @ cov_b) has a large imaginary part")
        root = root.real
    return root


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID on Inception features).

    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b))`` with sample means and unbiased
    sample covariances, in squared feature units. As in the reference implementation, a
    non-finite square root is retried with ``eps * I`` added to both covariances, and an
    imaginary part up to 1e-3 on the diagonal is dropped (a larger one raises ValueError).
    """
    _check_features(a, b, min_rows=2)
    (mu_a, cov_a), (mu_b, cov_b) = _moments(a), _moments(b)
    diff = mu_a - mu_b
    root = _sqrtm_product(cov_a, cov_b, eps)
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    m = len(x)
    kxx, kyy = _polynomial_kernel(x, x), _polynomial_kernel(y, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * _polynomial_kernel(x, y).mean())


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): mean and std of the unbiased MMD^2 over random subsets.

    Kernel ``k(x, y) = (x . y / D + 1)^3``. Each of ``subsets`` rounds draws
    ``m = min(subset_size, len(a), len(b))`` rows of each set without replacement and computes
    ``sum_{i!=j} k(a_i, a_j) / (m(m-1)) + sum_{i!=j} k(b_i, b_j) / (m(m-1))
    - 2 sum_{i,j} k(a_i, b_j) / m^2``. Being unbiased, it can be slightly negative for sets
    drawn from one distribution. The std is the population std over the rounds.
    """
    _check_features(a, b, min_rows=2)
    if subsets < 1:
        raise ValueError(f"subsets must be at least 1, got {subsets}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"subset_size must be at least 2, got {subset_size}")
    rng = np.random.default_rng(seed)
    values = [
        _unbiased_mmd2(
            a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        )
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _standardise(x: np.ndarray) -> np.ndarray:
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def _linear_svm_scores(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Decision values ``w . x + b`` of a linear SVM fitted to ``x`` with labels +-1.

    Minimises LinearSVC's primal, ``1/2 |w|^2 + C sum_i max(0, 1 - y_i (w . x_i + b))^2``
    (squared hinge, C = 1, bias not penalised), from zero by L-BFGS: the objective is convex
    and differentiable, so the fit is deterministic.
    """

    def objective(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:-1], params[-1]
        slack = np.maximum(0.0, 1.0 - labels * (x @ w + b))
        d_scores = -2.0 * _SVM_C * labels * slack
        gradient = np.append(w + x.T @ d_scores, d_scores.sum())
        return 0.5 * w @ w + _SVM_C * slack @ slack, gradient

    start = np.zeros(x.shape[1] + 1)
    fit = scipy.optimize.minimize(objective, start, jac=True, method="L-BFGS-B")
    return x @ fit.x[:-1] + fit.x[-1]


def paired_unpaired_ids(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """P-IDS and U-IDS (Zhao et al. 2021, Co-Mod-GAN) of paired real and fake features.

    A linear SVM (see ``_linear_svm_scores``) is fitted to separate the real rows (+1) from the
    fake rows (-1), on features standardised with the pooled mean and std; a row is called
    real when its decision value is > 0. U-IDS is the mean of the false-positive and
    false-negative rates on those same rows (0.5 = indistinguishable, 0 = always told apart).
    P-IDS is the fraction of pairs ``(real_i, fake_i)`` whose fake scores higher than its
    real, ties counting one half (0.5 = indistinguishable, 0 = the fake always loses).
    """
    _check_features(real, fake, min_rows=1)
    if len(real) != len(fake):
        raise ValueError(f"P-IDS needs pairs: {len(real)} real vs {len(fake)} fake rows")
    labels = np.concatenate([np.ones(len(real)), -np.ones(len(fake))])
    scores = _linear_svm_scores(_standardise(np.concatenate([real, fake])), labels)
    real_scores, fake_scores = scores[: len(real)], scores[len(real) :]
    wins = np.mean(fake_scores > real_scores) + 0.5 * np.mean(fake_scores == real_scores)
    errors = np.mean(real_scores <= 0) + np.mean(fake_scores > 0)
    return float(wins), float(errors / 2)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _network_input(image: np.ndarray, size: int) -> np.ndarray:
    """3 x size x size float32 RGB on [0, 1]: grey repeated, alpha dropped, ints / dtype max."""
    scale = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0
    pixels = image.astype(np.float32) / np.float32(scale)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an H x W grey, RGB or RGBA image, got shape {image.shape}")
    pixels = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[:, :, :3]
    shrinking = pixels.shape[0] >= size and pixels.shape[1] >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(pixels, (size, size), interpolation=interpolation)
    return np.ascontiguousarray(resized.transpose(2, 0, 1))


class FeatureExtractor:
    """A TorchScript network mapping images to feature vectors, for the set metrics above.

    The network receives a float32 batch N x 3 x ``input_size`` x ``input_size`` of RGB on
    [0, 1] (any further normalisation belongs inside the network) and may return any tensor
    with N rows; it is flattened to N x D. ``sha256`` identifies the file, so that scores are
    only compared when they come from the same network.
    """

    def __init__(
        self, path: str | Path, *, input_size: int = 299, batch_size: int = 32, device: str = "cpu"
    ) -> None:
        import torch

        path = Path(path)
        if input_size < 1 or batch_size < 1:
            raise ValueError(f"input_size and batch_size must be >= 1: {input_size}, {batch_size}")
        if not path.is_file():
            raise ValueError(f"feature extractor file not found: {path}")
        self.path, self.input_size = path, input_size
        self.batch_size, self.device = batch_size, device
        self.sha256 = _sha256(path)
        try:
            self._network = torch.jit.load(str(path), map_location=device)
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"{path} is not a TorchScript file (torch.jit.save): {error}"
            ) from error
        self._network.eval()

    def features(self, images: list[np.ndarray]) -> np.ndarray:
        """N x D float64 features of ``images`` (any sizes; grey, RGB or RGBA; any int dtype)."""
        if not images:
            raise ValueError("no images to extract features from")
        starts = range(0, len(images), self.batch_size)
        return np.concatenate([self._batch(images[i : i + self.batch_size]) for i in starts])

    def _batch(self, images: list[np.ndarray]) -> np.ndarray:
        import torch

        batch = np.stack([_network_input(image, self.input_size) for image in images])
        with torch.inference_mode():
            output = self._network(torch.from_numpy(batch).to(self.device))
        if not isinstance(output, torch.Tensor) or output.ndim == 0 or len(output) != len(batch):
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise RuntimeError(
                f"{self.path.name} must return one row per image (N x D after flattening): "
                f"gave {got} for {len(batch)} images"
            )
        return output.reshape(len(batch), -1).to(torch.float64).cpu().numpy()


def make_random_extractor(
    path: str | Path, dim: int = 64, input_size: int = 64, seed: int = 0
) -> str:
    """Save a small random conv net as TorchScript at ``path``; return the file's sha256.

    Three stride-2 3x3 conv + ReLU layers (16, 32, 64 channels), global average pooling and a
    linear layer to ``dim`` features. Every parameter is drawn from its own generator seeded
    with ``seed`` (uniform on +-1/sqrt(fan-in), as PyTorch's default); the global torch RNG is
    left as it was. Any input size works; the net is checked with one pass at ``input_size``,
    the size to give ``FeatureExtractor``.
    """
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):  # the layers' own default init draws globally
        layers: list[nn.Module] = []
        for c_in, c_out in ((3, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
        network = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, dim))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in network:
            if isinstance(layer, nn.Conv2d | nn.Linear):
                bound = layer.weight[0].numel() ** -0.5
                for parameter in (layer.weight, layer.bias):
                    parameter.uniform_(-bound, bound, generator=generator)
    scripted = torch.jit.script(network.eval())
    with torch.inference_mode():
        shape = tuple(scripted(torch.zeros(1, 3, input_size, input_size)).shape)
    if shape != (1, dim):
        raise RuntimeError(f"the random extractor gave {shape} features, expected (1, {dim})")
    scripted.save(str(path))
    return _sha256(Path(path))
