"""Optional albumentations steps applied jointly to image, mask and boxes after the fill."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np


def _albumentations() -> Any:
    # albumentations checks PyPI for a newer release at import unless told not to; runs are offline.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


@dataclass
class Augmented:
    """The result of one augmentation call and the parameters it drew (for the row)."""

    image: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray
    labels: tuple[str, ...]
    params: list[dict[str, Any]]


class Augmenter:
    """A compiled list of steps like ``[{HorizontalFlip: {p: 0.5}}]``; build once, call often."""

    def __init__(self, steps: list[dict[str, dict[str, Any]]]) -> None:
        A = _albumentations()
        transforms = [_transform(A, i, step) for i, step in enumerate(steps)]
        bbox = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3)
        with warnings.catch_warnings():
            # Boxes are always passed, even when no step moves pixels; that is not a problem.
            warnings.filterwarnings("ignore", "Got processor for bboxes", UserWarning)
            self._compose = A.Compose(
                transforms, bbox_params=bbox, save_applied_params=True, seed=0
            )

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        boxes: np.ndarray,
        labels: tuple[str, ...],
        rng: np.random.Generator,
    ) -> Augmented:
        """Augment deterministically from ``rng``; 16-bit images round-trip through float32."""
        self._compose.set_random_seed(int(rng.integers(0, 2**32 - 1)))
        work, restore = _to_albumentations(image)
        h, w = mask.shape
        clipped = np.clip(boxes.reshape(-1, 4), [0, 0, 0, 0], [w, h, w, h])
        out = self._compose(
            image=work, mask=mask.astype(np.uint8), bboxes=clipped, labels=list(labels)
        )
        params = [{"transform": name, **_jsonable(p)} for name, p in out["applied_transforms"]]
        new_boxes = np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4)
        return Augmented(
            restore(out["image"]), out["mask"].astype(bool), new_boxes, tuple(out["labels"]), params
        )


def build_augmenter(steps: list[dict[str, dict[str, Any]]]) -> Augmenter | None:
    """Validate and compile the manifest's ``augment`` list; None when it is empty."""
    return Augmenter(steps) if steps else None


def _transform(A: Any, index: int, step: dict[str, dict[str, Any]]) -> Any:
    ((name, params),) = step.items()
    cls = getattr(A, name, None)
    if not isinstance(cls, type) or not issubclass(cls, A.BasicTransform):
        raise ValueError(f"step {index}: {name!r} is not an albumentations transform")
    try:
        # albumentations only warns about unknown arguments; a typo must not pass silently.
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            return cls(**(params or {}))
    except (TypeError, ValueError, UserWarning) as exc:
        raise ValueError(f"step {index} ({name}): {exc}") from None


def _to_albumentations(image: np.ndarray) -> tuple[np.ndarray, Any]:
    """albumentations works on uint8 or float32 (H, W[, C]); keep our dtype and channel layout."""
    gray = image.shape[2] == 1
    work = image[:, :, 0] if gray else image
    if image.dtype == np.uint16:
        work = work.astype(np.float32) / 65535.0

    def restore(out: np.ndarray) -> np.ndarray:
        if image.dtype == np.uint16:
            out = np.clip(np.rint(out * 65535.0), 0, 65535).astype(np.uint16)
        out = out.astype(image.dtype, copy=False)
        return np.ascontiguousarray(out[:, :, None] if out.ndim == 2 else out)

    return work, restore


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"<array {value.shape}>"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)
