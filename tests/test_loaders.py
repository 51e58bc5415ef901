"""The committed output loads with the tools ML teams already use.

pandas, pyarrow.dataset, Ray and Hugging Face ``datasets`` (images decode as images), each on a
dataset written by a real run; Croissant metadata validated by mlcroissant; our own reader and
torch Dataset. Two datasets: shards that name the images by path, and shards that embed them
(cut into several shards and row groups by shrinking the size limits, so the k-of-n naming and
the row-group sizing are exercised).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, manifest_text, photo_like
from PIL import Image

from pipelines import hf_dataset
from pipelines.codec import encode_image
from pipelines.errors import RunError
from pipelines.hf_features import SHARD_SCHEMA, card_features, features, shard_schema
from pipelines.manifest_loader import load_manifest

pytestmark = pytest.mark.slow

SOURCES = 12  # 4 patients x 3 images: the split is drawn per patient (group_pattern)
ROWS = 2 * SOURCES
ROW_BYTES, PER_GROUP, PER_SHARD = 4000, 4, 8  # the embedded dataset's shrunk limits


@contextmanager
def small_shards():
    """A few rows per row group and per shard, whatever the images weigh."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hf_dataset, "SHARD_BYTES", PER_SHARD * ROW_BYTES + ROW_BYTES // 2)
        patch.setattr(hf_dataset, "ROW_GROUP_BYTES", PER_GROUP * ROW_BYTES)
        patch.setattr(hf_dataset, "_bytes_per_row", lambda fs, path, locate: ROW_BYTES)
        yield


@pytest.fixture(scope="module")
def made(ray_local, tmp_path_factory) -> dict[str, Path]:
    """Two committed datasets, ``paths`` and ``embedded`` (each with its croissant.json)."""
    from pipelines.run import run_manifest

    work = tmp_path_factory.mktemp("loaders")
    images = work / "images"
    images.mkdir()
    boxes = ["image_name,x1,y1,x2,y2,class,image_width,image_height"]
    for i in range(SOURCES):
        name = f"p{i % 4}_{i:02d}.png"
        (images / name).write_bytes(encode_image(photo_like(36, 44, seed=i), "png"))
        boxes += [f"{name},2,3,12,20,can,44,36", f"{name},20,4,40,30,box,44,36"]
    (work / "boxes.csv").write_text("\n".join(boxes) + "\n")
    source = f'source: {{uri: "{images}", glob: "*", annotations: "{work / "boxes.csv"}"}}'
    split = 'split: {train: 0.5, val: 0.25, test: 0.25, group_pattern: "^(p\\\\d)_"}'
    out = {}
    for name, embed in (("paths", False), ("embedded", True)):
        text = manifest_text(images, work / name, source=source) + split
        path = work / f"{name}.yaml"
        path.write_text(text.replace("format: png", f"format: png, embed_images: {embed}"))
        with small_shards() if embed else nullcontext():
            summary = run_manifest(load_manifest(path))
        assert summary.status == "committed" and summary.rows_written == ROWS
        out[name] = work / name
    return out


def file_digest(path: Path) -> dict:
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def file_size(uri: str) -> int:
    return Path(uri.removeprefix("file://")).stat().st_size


def committed(root: Path) -> dict:
    return json.loads((root / "_COMMITTED").read_text())


def index_of(root: Path) -> pd.DataFrame:
    return pd.read_parquet(root / committed(root)["index"])


def data_folder(root: Path) -> Path:
    return root / committed(root)["index"].rsplit("/", 1)[0] / "data"


def test_pandas_and_pyarrow_dataset_read_the_index_and_the_shards(made):
    root = made["paths"]
    index = index_of(root)
    assert len(index) == ROWS and (index["status"] == "ok").all()
    shards = pd.read_parquet(data_folder(root))
    assert sorted(shards["output_sha256"]) == sorted(index["output_sha256"])
    assert shards["split"].value_counts().to_dict() == index["split"].value_counts().to_dict()
    dataset = pads.dataset(str(data_folder(made["embedded"])), format="parquet")
    assert dataset.count_rows() == ROWS
    assert dataset.schema.field("image").type.names == ["bytes", "path"]
    assert b"huggingface" in dataset.schema.metadata


def test_ray_reads_the_index_and_the_shards(made):
    import ray

    index = ray.data.read_parquet(str(made["embedded"] / committed(made["embedded"])["index"]))
    assert index.count() == ROWS
    assert set(index.take(1)[0]) >= {"image_id", "output_uri", "split", "seed"}
    shards = ray.data.read_parquet(str(data_folder(made["embedded"])))
    row = shards.take(1)[0]
    assert shards.count() == ROWS and row["image"]["bytes"][:4] == b"\x89PNG"


@pytest.mark.parametrize("name", ["paths", "embedded"])
def test_hugging_face_loads_the_dataset_folder_with_images(made, name, tmp_path):
    import datasets

    root = made[name]
    loaded = datasets.load_dataset(str(root), cache_dir=str(tmp_path / "hf"))
    index = index_of(root).set_index(["image_id", "variant"])
    assert {s: loaded[s].num_rows for s in loaded} == index["split"].value_counts().to_dict()
    for split in loaded:
        first = loaded[split][0]
        assert isinstance(first["image"], Image.Image) and first["image"].size == (44, 36)
        assert isinstance(first["mask"], Image.Image) and first["mask"].size == (44, 36)
        row = index.loc[(first["image_id"], first["variant"])]
        assert (first["seed"], first["split"]) == (row["seed"], split)
        assert first["labels"] == list(row["labels"]) and len(first["boxes"][0]) == 4
    where = defaultdict(set)  # the variants of one patient never straddle splits
    for split in loaded:
        for image_id in loaded[split]["image_id"]:
            where[image_id.split("_")[0]].add(split)
    assert all(len(splits) == 1 for splits in where.values()), dict(where)
    assert len(set().union(*where.values())) >= 2


def test_the_three_forms_of_the_features_agree():
    import datasets

    from_schema = datasets.Features.from_arrow_schema(shard_schema())
    assert from_schema == datasets.Features.from_dict(features())
    assert from_schema == datasets.Features._from_yaml_list(card_features())
    assert from_schema.arrow_schema.types == SHARD_SCHEMA.types
    assert isinstance(from_schema["image"], datasets.Image)


def test_embedded_shards_are_cut_by_size_and_carry_the_bytes(made):
    folder = data_folder(made["embedded"])
    names = sorted(p.name for p in folder.iterdir())
    counts = index_of(made["embedded"])["split"].value_counts()
    for split, rows in counts.items():
        n = -(-rows // PER_SHARD)
        assert [x for x in names if x.startswith(f"{split}-")] == [
            f"{split}-{k:05d}-of-{n:05d}.parquet" for k in range(n)
        ]
        for k in range(n):  # full row groups, full shards; only the last ones are short
            parquet = pq.ParquetFile(folder / f"{split}-{k:05d}-of-{n:05d}.parquet")
            in_shard = min(PER_SHARD, rows - k * PER_SHARD)
            groups = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
            assert groups == [PER_GROUP] * (in_shard // PER_GROUP) + [in_shard % PER_GROUP] * (
                in_shard % PER_GROUP > 0
            )
    row = pq.read_table(folder / names[0]).to_pylist()[0]
    assert row["image"]["bytes"][:8] == b"\x89PNG\r\n\x1a\n" and row["image"]["path"].endswith(
        ".png"
    )
    assert hashlib.sha256(row["image"]["bytes"]).hexdigest() == row["output_sha256"]
    assert hashlib.sha256(row["mask"]["bytes"]).hexdigest() == row["mask_sha256"]


def test_row_groups_and_shards_are_sized_from_the_bytes_of_the_files(made, monkeypatch):
    import fsspec

    root, marker = made["embedded"], committed(made["embedded"])
    first = pq.ParquetFile(root / marker["index"]).read_row_group(0).slice(0, 32).to_pylist()
    sizes = [file_size(r["output_uri"]) + file_size(r["mask_uri"]) for r in first]
    per_row = sum(sizes) // len(sizes)
    monkeypatch.setattr(hf_dataset, "ROW_GROUP_BYTES", 3 * per_row)
    monkeypatch.setattr(hf_dataset, "SHARD_BYTES", 7 * per_row)  # two whole groups: 6 rows
    record = json.loads((root / "run.json").read_text())
    written = record["integrity"]["root"]
    fs = fsspec.filesystem("file")
    keys, counts = hf_dataset.write_split_shards(
        fs, str(root), "sized", marker["index"], written, True
    )
    for split, shards in keys.items():
        assert len(shards) == -(-counts[split] // 6)
        groups = [
            pq.ParquetFile(root / key).metadata.row_group(g).num_rows
            for key in shards
            for g in range(pq.ParquetFile(root / key).num_row_groups)
        ]
        assert groups[:-1] == [3] * (len(groups) - 1) and sum(groups) == counts[split]


@pytest.mark.parametrize("name", ["paths", "embedded"])
def test_writing_the_shards_again_gives_the_same_bytes_and_their_digests(made, name):
    import fsspec

    root, marker = made[name], committed(made[name])
    record = json.loads((root / "run.json").read_text())
    digests: dict = {}
    with small_shards() if name == "embedded" else nullcontext():
        keys, counts = hf_dataset.write_split_shards(
            fsspec.filesystem("file"), str(root), "again", marker["index"],
            record["integrity"]["root"], name == "embedded", digests=digests,
        )  # fmt: skip
    assert counts == record["hf_dataset"]["rows"]
    for split, shards in keys.items():
        for key, original in zip(shards, record["hf_dataset"]["shards"][split], strict=True):
            assert digests[key] == file_digest(root / key) == file_digest(root / original)


def test_the_card_points_load_dataset_at_this_versions_shards(made):
    root = made["paths"]
    text = (root / "README.md").read_text()
    assert (
        text == (root / committed(root)["index"].replace("index.parquet", "README.md")).read_text()
    )
    header = yaml.safe_load(text.split("---\n")[1])
    files = header["configs"][0]["data_files"]
    assert [f["split"] for f in files] == ["train", "val", "test"]
    for entry in files:
        assert sorted(root.glob(entry["path"])) == sorted(
            data_folder(root).glob(f"{entry['split']}-*")
        )
    counts = index_of(root)["split"].value_counts().to_dict()
    assert {s["name"]: s["num_examples"] for s in header["dataset_info"]["splits"]} == counts
    assert header["license"] == "unknown" and "synthetic" in header["tags"]
    record = json.loads((root / "run.json").read_text())
    for fact in (record["manifest_sha256"], record["run_id"], record["code_version"], "telea"):
        assert fact in text


@pytest.mark.parametrize("name", ["paths", "embedded"])
def test_croissant_validates_and_its_records_are_the_rows(made, name):
    mlc = pytest.importorskip("mlcroissant")
    record = json.loads((made[name] / "run.json").read_text())
    path = made[name] / record["hf_dataset"]["croissant"]
    # every shard it lists is the file committed, by sha256 and size
    listed = [f for f in json.loads(path.read_text())["distribution"] if "sha256" in f]
    shards = [k for keys in record["hf_dataset"]["shards"].values() for k in keys]
    assert len(listed) == len(shards) > 0
    for entry, key in zip(sorted(listed, key=lambda f: f["name"]), sorted(shards), strict=True):
        assert key.endswith(entry["contentUrl"])
        digest = file_digest(made[name] / key)
        assert entry["sha256"] == digest["sha256"] == record["hf_dataset"]["files"][key]["sha256"]
        assert entry["contentSize"] == f"{digest['bytes']} B"
    assert "croissant.json" in (made[name] / "README.md").read_text()
    dataset = mlc.Dataset(jsonld=path)
    records = list(dataset.records("default"))
    assert len(records) == ROWS
    first = records[0]
    if name == "embedded":
        assert isinstance(first["default/image"], Image.Image)
    else:
        assert Path(first["default/image"].decode()).is_file()
    assert len(first["default/labels"]) == len(first["default/boxes"]) == 2


def test_a_broken_croissant_fails_validation(made, tmp_path):
    mlc = pytest.importorskip("mlcroissant")
    doc = json.loads(next(made["embedded"].glob("versions/*/croissant.json")).read_text())
    broken = copy.deepcopy(doc)
    del broken["distribution"][-1]["includes"]  # the FileSet no longer says which files
    (tmp_path / "croissant.json").write_text(json.dumps(broken))
    with pytest.raises(mlc.ValidationError):
        mlc.Dataset(jsonld=tmp_path / "croissant.json")


def test_our_reader_reads_only_committed_versions(made):
    from pipelines import read_dataset

    root = str(made["paths"])
    train = read_dataset(root, split="train", columns=["image_id", "variant"])
    assert train.column_names == ["image_id", "variant"] and 0 < train.num_rows < ROWS
    assert read_dataset(root, version=1).num_rows == ROWS
    with pytest.raises(RunError, match="no committed version 2"):
        read_dataset(root, version=2)
    with pytest.raises(RunError, match="no committed dataset"):
        read_dataset(str(made["paths"] / "images"))
    lazy = "import pipelines, sys; assert 'pipelines.reader' not in sys.modules"
    subprocess.run([sys.executable, "-c", lazy], check=True, cwd=ROOT)


def test_torch_dataset_yields_tensors_and_batches(made, tmp_path):
    import torch

    from pipelines.reader import ImageDataset

    copied = tmp_path / "copy"  # a dataset copied elsewhere still reads (rows name the old root)
    shutil.copytree(made["paths"], copied)
    data = ImageDataset(str(copied), split="train")
    sample = data[0]
    assert sample["image"].shape == (3, 36, 44) and sample["image"].dtype == torch.uint8
    assert sample["mask"].shape == (36, 44) and sample["mask"].dtype == torch.bool
    assert sample["mask"].any() and sample["boxes"].shape == (2, 4)
    assert sample["labels"] == ["can", "box"] and sample["row"]["split"] == "train"
    pairs = ImageDataset(str(copied), split="train", transform=lambda s: (s["image"], s["mask"]))
    loader = torch.utils.data.DataLoader(pairs, batch_size=4, num_workers=0)
    shapes = [(images.shape, masks.shape) for images, masks in loader]
    assert shapes[0] == ((4, 3, 36, 44), (4, 36, 44)) and sum(s[0][0] for s in shapes) == len(data)


def test_a_dataset_in_a_bucket(made, moto_s3, tmp_path, monkeypatch):
    """Shards written to S3 (moto), as path-only and embedded; ``datasets`` decodes s3:// paths
    through fsspec with the process's own credentials and endpoint (AWS_* variables)."""
    import datasets
    import s3fs
    import torch

    from pipelines.reader import ImageDataset

    for name, value in {**moto_s3.env(), "AWS_ENDPOINT_URL_S3": moto_s3.endpoint_url}.items():
        monkeypatch.setenv(name, value)
    moto_s3.client().create_bucket(Bucket="loaders")
    s3fs.S3FileSystem.clear_instance_cache()  # a client made before the variables were set
    fs = s3fs.S3FileSystem()
    root, marker = made["paths"], committed(made["paths"])
    fs.put(f"{root}/", "loaders/ds/", recursive=True)  # a copy: rows still name the local root
    written = json.loads((root / "run.json").read_text())["integrity"]["root"]
    try:
        for embed in (False, True):
            keys, _ = hf_dataset.write_split_shards(
                fs, "loaders/ds", f"s3-{embed}", marker["index"], written, embed
            )
            local = tmp_path / f"{embed}.parquet"
            fs.get(f"loaders/ds/{keys['train'][0]}", str(local))
            path = pq.read_table(local)["image"][0]["path"].as_py()
            assert path.startswith("s3://loaders/ds/images/") != embed
            row = datasets.Dataset.from_parquet(str(local), cache_dir=str(tmp_path / "hf"))[0]
            assert isinstance(row["image"], Image.Image) and row["image"].size == (44, 36)
        options = {"endpoint_url": moto_s3.endpoint_url}
        data = ImageDataset("s3://loaders/ds", split="val", storage_options=options)
        assert data[0]["image"].shape == (3, 36, 44) and data[0]["image"].dtype == torch.uint8
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # no client bound to moto for later tests
