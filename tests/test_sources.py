import hashlib
import math
import os
from pathlib import Path

import fsspec
import numpy as np
import pytest

from pipelines.errors import RunError
from pipelines.listing import list_in_parallel
from pipelines.manifest import SourceSpec
from pipelines.planning import PlannedRun, plan_run, work_items
from pipelines.ray_plan import MAX_BLOCK_ITEMS, block_rows
from pipelines.sources import filesystem, list_sources, load_annotations, read_bytes, source_table

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


# --- Listing at scale: per-prefix parallel listings, compact item tables, work payloads ---


@pytest.fixture(scope="module")
def tree():
    """moto's S3 with a tree wide at the top (40 prefixes) and deep under one of them."""
    from s3_servers import MotoS3

    saved = dict(os.environ)
    keys = [f"root/w{i:02d}/img_{i}.png" for i in range(40)]
    keys += [f"root/deep/{a}/{b}/x_{a}{b}.jpg" for a in "ab" for b in "xyz"]
    keys += ["root/deep/top.png", "root/z.png", "root/w00/sub/n.txt", "rootless/other.png"]
    with MotoS3(buckets=["tree"]) as server:
        os.environ.update(server.env())
        client = server.client()
        for key in keys:
            client.put_object(Bucket="tree", Key=key, Body=key.encode())
        yield server
    os.environ.clear()
    os.environ.update(saved)


def s3_spec(server, root: str, **fields) -> SourceSpec:
    options = {"endpoint_url": server.endpoint_url}
    return SourceSpec(uri=f"s3://tree/{root}", storage_options=options, **fields)


@pytest.mark.parametrize("root", ["root", "root/deep"])
@pytest.mark.parametrize("glob", ["**/*", "**/*.png", "**/x_*"])
def test_parallel_listing_equals_the_serial_listing(tree, root, glob):
    parallel, _ = source_table(s3_spec(tree, root, glob=glob))
    serial, _ = source_table(s3_spec(tree, root, glob=glob), parallel=False)
    assert parallel.num_rows > 0 and parallel.equals(serial)


@pytest.mark.parametrize("concurrency", [1, 3, 64])
def test_parallel_listing_finds_every_object_once(tree, concurrency):
    fs, root = filesystem("s3://tree/root", {"endpoint_url": tree.endpoint_url})
    tables = list(list_in_parallel(fs, root, concurrency=concurrency))
    paths = [p for t in tables for p in t["path"].to_pylist()]
    assert sorted(paths) == sorted(fs.find(root)) and len(paths) == len(set(paths))


def test_parallel_listing_keeps_no_info_per_object_in_the_driver(tree):
    fs, _ = filesystem("s3://tree/root", {"endpoint_url": tree.endpoint_url})
    fs.invalidate_cache()
    source_table(s3_spec(tree, "root"), parallel=False)
    assert "tree/root/w07" in fs.dircache  # s3fs caches an info dict per object listed
    fs.invalidate_cache()
    source_table(s3_spec(tree, "root"))
    assert not [path for path in fs.dircache if path.startswith("tree/root/")]


def test_s3_listing_carries_the_etag_into_the_work_payload(tree):
    spec = s3_spec(tree, "root/deep")
    items = list_sources(spec)
    for item in items:  # each body is its own key: single-part ETags are the md5 of the bytes
        key = item.uri.removeprefix("s3://tree/")
        assert item.etag == hashlib.md5(key.encode()).hexdigest()
    sources, _ = source_table(spec)
    payload = work_items(PlannedRun(sources, {}, 0, 0, sources.num_rows))
    assert [p["etag"] for p in payload] == [item.etag for item in items]
    assert [p["size"] for p in payload] == [item.size for item in items]


def test_work_payload_joins_annotations_per_image(tmp_path):
    from conftest import manifest_text, write_images

    from pipelines.manifest_loader import load_manifest

    names = write_images(tmp_path / "images", 3)
    boxes = "image_name,x1,y1,x2,y2,class,image_width,image_height\n"
    boxes += f"{names[0]},1,2,30.5,40,cola,128,96\n{names[0]},5,6,7,8,chips,128,96\n"
    boxes += f"{names[2]},9,9,20,20,cola,128,96\nnot_listed.png,1,1,2,2,x,9,9\n"
    (tmp_path / "boxes.csv").write_text(boxes)
    source = f'source: {{uri: "{tmp_path / "images"}", annotations: "{tmp_path / "boxes.csv"}"}}'
    path = tmp_path / "m.yaml"
    path.write_text(manifest_text(tmp_path / "images", tmp_path / "out", source=source))
    loaded = load_manifest(path)
    planned = plan_run(loaded)
    annotations = load_annotations(str(tmp_path / "boxes.csv"), {})
    expected = []
    for item in list_sources(loaded.manifest.source):
        ann = annotations.get(item.image_id)
        boxes, labels = (ann.boxes.tolist(), list(ann.labels)) if ann else ([], [])
        payload = {"image_id": item.image_id, "uri": item.uri, "size": item.size}
        payload["etag"] = item.etag  # size-mtime for local files
        expected.append(payload | {"boxes": boxes, "labels": labels})
    assert work_items(planned) == expected
    assert expected[0]["boxes"] == [[1.0, 2.0, 30.5, 40.0], [5.0, 6.0, 7.0, 8.0]]
    assert (planned.annotated, planned.unmatched_annotations) == (2, 1)


@pytest.mark.parametrize(
    ("items", "batch", "actors"),
    [(1, 4, 2), (3, 4, 2), (7, 4, 2), (100, 4, 2), (100_000, 4, 2), (100_000_000, 8, 64)],
)
def test_blocks_cover_every_item_in_whole_batches(items, batch, actors):
    rows = block_rows(items, batch, actors)
    blocks = math.ceil(items / rows)
    assert blocks * rows >= items > (blocks - 1) * rows
    assert blocks >= min(items, actors)  # every actor gets work
    assert rows <= max(MAX_BLOCK_ITEMS, batch)  # a block's retry stays cheap
    assert rows % batch == 0 or items < batch * actors  # partial batches only in tiny runs


@pytest.mark.parametrize("listed_size", [5, 30])  # the object grew / shrank since it was listed
def test_an_object_of_another_size_than_listed_is_source_changed_at_once(tmp_path, listed_size):
    from pipelines.errors import ItemError, Reason
    from pipelines.sources import read_bytes

    path = tmp_path / "a.jpg"
    path.write_bytes(b"eighteen bytes....")
    with pytest.raises(ItemError) as err:
        read_bytes(str(path), {}, size=listed_size)
    assert err.value.reason == Reason.SOURCE_CHANGED
    assert "when listed" in err.value.detail
