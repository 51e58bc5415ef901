"""One contract every mask generator in the manifest's union must keep.

The kinds are read from the union itself, so a new generator is covered as soon as it joins
``MaskKind``; it then only needs an entry in ``EXAMPLES``.
"""

from __future__ import annotations

import json
import typing

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from inpaint_ops.masks import MASK_KINDS, MaskContext, MaskKind, MaskSpec

HEIGHT, WIDTH = 48, 64  # not square, so a swapped height and width shows up
MEMBERS: tuple[type[MaskSpec], ...] = typing.get_args(typing.get_args(MaskKind)[0])
ADAPTER = TypeAdapter(MaskKind)

# Minimal valid parameters per kind, chosen so that every seed gives a non-empty mask.
EXAMPLES: dict[str, dict[str, object]] = {
    "product_slots": {"count": [1, 2], "margin_px": 1},
    "cloud_regions": {"coverage": [0.2, 0.4], "scale_px": 16},
    "damage": {"scratches": [1, 3], "blotches": [0, 2], "strokes": "medium"},
    "boxes": {"count": [1, 3], "size": [0.1, 0.4]},
    "from_files": {"uri": "masks"},
}
# Kinds whose mask does not depend on the seed, and why.
DETERMINISTIC = {"from_files": "the mask is the user's file; there is nothing to randomise"}


def _kind(member: type[MaskSpec]) -> str:
    return member.model_fields["kind"].default


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "uint8 rgb": rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8),
        "uint8 gray": rng.integers(0, 256, (HEIGHT, WIDTH, 1), dtype=np.uint8),
        "uint16 gray": rng.integers(0, 65536, (HEIGHT, WIDTH, 1), dtype=np.uint16),
    }


def _context() -> MaskContext:
    # Two shelf rows of four products, and a user mask with a white hole in the middle.
    boxes = [(4 + 15 * c, 3 + 24 * r, 15 + 15 * c, 20 + 24 * r) for r in range(2) for c in range(4)]
    user_mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    user_mask[10:30, 20:40] = 255
    return MaskContext(
        image_id="shelf/a.jpg",
        boxes=np.array(boxes, dtype=np.float64),
        labels=("sku",) * len(boxes),
        user_mask=user_mask,
    )


def _example(kind: str) -> dict[str, object]:
    if kind not in EXAMPLES:
        pytest.fail(f"mask kind {kind!r} has no example parameters: add it to EXAMPLES")
    return {"kind": kind, **EXAMPLES[kind]}


def test_mask_kinds_lists_exactly_the_union_members() -> None:
    assert set(MASK_KINDS) == set(MEMBERS)
    assert len({_kind(member) for member in MEMBERS}) == len(MEMBERS)


@pytest.mark.parametrize("member", MEMBERS, ids=_kind)
def test_mask_generator_contract(member: type[MaskSpec]) -> None:
    kind = _kind(member)
    params = _example(kind)
    spec = ADAPTER.validate_python(params)
    assert type(spec) is member
    assert ADAPTER.validate_json(spec.model_dump_json()) == spec

    context = _context()
    for name, image in _images().items():
        before = image.copy()
        first = spec.generate(image, context, np.random.default_rng(1))
        again = spec.generate(image, context, np.random.default_rng(1))
        assert first.mask.shape == (HEIGHT, WIDTH), name
        assert first.mask.dtype == bool, name
        assert first.mask.any(), f"{kind} gave an empty mask on {name}"
        assert np.array_equal(first.mask, again.mask), f"{kind} is not deterministic on {name}"
        assert first.removed == again.removed and first.info == again.info
        assert np.array_equal(image, before), f"{kind} modified the {name} input image"
        assert all(isinstance(i, int) and 0 <= i < len(context.boxes) for i in first.removed)
        json.dumps(first.info)  # goes onto the row as JSON: plain Python values only
        if kind not in DETERMINISTIC:
            masks = [spec.generate(image, context, np.random.default_rng(s)).mask for s in range(5)]
            assert any(not np.array_equal(masks[0], m) for m in masks[1:]), f"{kind}: seed unused"

    assert np.array_equal(context.user_mask, _context().user_mask)
    assert np.array_equal(context.boxes, _context().boxes)

    tiny = np.zeros((9, 13, 1), dtype=np.uint8)
    tiny_context = MaskContext(boxes=np.array([[1.0, 1.0, 6.0, 7.0]]), user_mask=np.eye(9, 13))
    assert spec.generate(tiny, tiny_context, np.random.default_rng(0)).mask.shape == (9, 13)

    schema = ADAPTER.json_schema()
    assert kind in json.dumps(schema)
    properties = member.model_json_schema()["properties"]
    undocumented = [f for f, p in properties.items() if f != "kind" and not p.get("description")]
    assert not undocumented, f"{kind} fields without a description: {undocumented}"

    field = next(f for f in member.model_fields if f != "kind")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ADAPTER.validate_python({**params, field[:-1]: params.get(field, 1)})
    with pytest.raises(ValidationError):
        spec.kind = "other"  # specs are frozen: they are hashed into the manifest fingerprint
