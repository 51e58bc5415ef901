from pathlib import Path

import fsspec
import numpy as np
import pytest

from pipelines.errors import RunError
from pipelines.manifest import SourceSpec
from pipelines.sources import list_sources, load_annotations, read_bytes

ROOT = Path(__file__).resolve().parent.parent
SHELVES = ROOT / "samples" / "shelves"


def test_csv_and_coco_give_the_same_boxes():
    csv = load_annotations(str(SHELVES / "boxes.csv"), {})
    coco = load_annotations(str(SHELVES / "coco.json"), {})
    assert csv.keys() == coco.keys() and len(csv) >= 8
    for name in csv:
        np.testing.assert_allclose(csv[name].boxes, coco[name].boxes)
        assert csv[name].labels == coco[name].labels


def test_listing_is_sorted_with_relative_ids_and_filters_extensions():
    fs = fsspec.filesystem("memory")
    for key in ("b/2.png", "a.JPG", "b/1.png", "notes.txt", "b/c/3.webp"):
        fs.pipe_file(f"/listing/{key}", b"x")
    items = list_sources(SourceSpec(uri="memory://listing"))
    assert [i.image_id for i in items] == ["a.JPG", "b/1.png", "b/2.png", "b/c/3.webp"]
    assert read_bytes(items[0].uri, {}) == b"x"


def test_glob_selects(tmp_path):
    for name in ("x.png", "y.jpg"):
        (tmp_path / name).write_bytes(b"x")
    assert [i.image_id for i in list_sources(SourceSpec(uri=str(tmp_path), glob="*.jpg"))] == [
        "y.jpg"
    ]


def test_missing_source_root_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="not a readable folder"):
        list_sources(SourceSpec(uri=str(tmp_path / "nope")))


def test_annotation_table_without_sku_columns_is_refused(tmp_path):
    (tmp_path / "a.csv").write_text("file,left,top\nx.jpg,1,2\n")
    with pytest.raises(RunError, match="missing SKU-110K columns"):
        load_annotations(str(tmp_path / "a.csv"), {})


def test_annotations_of_unknown_format_are_refused(tmp_path):
    (tmp_path / "a.xml").write_text("<x/>")
    with pytest.raises(RunError, match="expected a .json"):
        load_annotations(str(tmp_path / "a.xml"), {})


def test_folder_names_with_glob_characters_are_literal(tmp_path):
    folder = tmp_path / "shelves[2024]"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    assert [i.image_id for i in list_sources(SourceSpec(uri=str(folder)))] == ["a.png"]
