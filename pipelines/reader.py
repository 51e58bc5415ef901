"""Reading a synthfill dataset from Python: the committed index, and a torch Dataset.

Only committed data is read (the version ``_COMMITTED`` names, or the newest commit record
when a crash left the pointer behind), from a folder or any fsspec URL::

    from pipelines import read_dataset
    index = read_dataset("s3://bucket/synth/retail", split="train")   # pyarrow.Table

    from pipelines.reader import ImageDataset
    data = ImageDataset("out/retail_shelf", split="train")
    sample = data[0]   # {"image": CHW tensor, "mask": HW bool, "boxes": Nx4, "labels", "row"}

A dataset copied elsewhere as a whole still reads: rows name files under the root they were
written to (the run record's ``integrity.root``), and are looked for under ``uri`` instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import layout, versions
from pipelines.codec import decode_image, decode_mask
from pipelines.errors import RunError
from pipelines.sources import filesystem


def read_dataset(
    uri: str,
    *,
    split: str | None = None,
    version: int | None = None,
    columns: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> pa.Table:
    """The index of the latest committed version (or of ``version``, while it is kept):
    one row per image, every column of the README's index table, optionally one ``split``
    and only ``columns``. Raises RunError when ``uri`` holds no such committed version."""
    fs, root = filesystem(uri, storage_options or {})
    return _read_index(fs, root, committed_version(fs, root, uri, version), split, columns)


def committed_version(
    fs: fsspec.AbstractFileSystem, root: str, uri: str, number: int | None = None
) -> versions.Version:
    """The commit record of version ``number``, or of the latest committed version."""
    if number is not None:
        found = versions.read_record(fs, root, number)
        if found is None:
            raise RunError(f"{uri!r} has no committed version {number} (still kept)")
        return found
    latest, _ = versions.latest(fs, root)
    if latest is None:
        raise RunError(f"{uri!r} holds no committed dataset")
    return latest


def _read_index(
    fs: fsspec.AbstractFileSystem,
    root: str,
    found: versions.Version,
    split: str | None,
    columns: list[str] | None,
) -> pa.Table:
    wanted = None if columns is None else list(dict.fromkeys([*columns, "split"]))
    table = versions.read_table(fs, root, found.index, wanted)
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    return table.select(columns) if columns is not None else table


class ImageDataset:
    """A map-style ``torch.utils.data.Dataset`` over a committed version's rows.

    Items are dicts: ``image`` a (C, H, W) tensor of the output's own dtype (uint8, or uint16
    for 16-bit outputs: convert with ``.float()`` before ops torch lacks for uint16, such as
    flips), ``mask`` a (H, W) bool tensor (True = filled), ``boxes`` a (N, 4) float32 tensor
    (x1, y1, x2, y2 in output pixels), ``labels`` a list of str and ``row`` the index row (a
    dict). ``transform`` gets the dict and returns what the item is. Images are read when an
    item is asked for, through fsspec (folders and buckets alike); with a DataLoader each
    worker process opens its own connection. torch is imported only when an item is made.
    """

    def __init__(
        self,
        uri: str,
        *,
        split: str | None = None,
        version: int | None = None,
        storage_options: dict[str, Any] | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.uri, self.options, self.transform = uri, storage_options or {}, transform
        fs, root = filesystem(uri, self.options)
        found = committed_version(fs, root, uri, version)
        self.rows = _read_index(fs, root, found, split, None).to_pylist()
        self.prefix = _written_root(fs, root, found).rstrip("/") + "/"
        self._fs: fsspec.AbstractFileSystem | None = None  # opened where items are read
        self._root = root

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Any:
        import torch

        row = self.rows[i]
        image = decode_image(self._read(row["output_uri"]))
        mask = decode_mask(self._read(row["mask_uri"]))
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(mask.astype(bool)),
            "boxes": torch.tensor(row["boxes"] or [], dtype=torch.float32).reshape(-1, 4),
            "labels": list(row["labels"] or []),
            "row": row,
        }
        return self.transform(item) if self.transform else item

    def _read(self, uri: str) -> bytes:
        if self._fs is None:  # not pickled with the dataset: DataLoader workers open their own
            self._fs, _ = filesystem(self.uri, self.options)
        if uri.startswith(self.prefix):
            return self._fs.cat_file(layout.join(self._root, uri[len(self.prefix) :]))
        return self._fs.cat_file(self._fs._strip_protocol(uri))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None}


def _written_root(fs: fsspec.AbstractFileSystem, root: str, found: versions.Version) -> str:
    """The URI the version's rows were written under (its run record says), else ``root``'s."""
    record = json.loads(fs.cat_file(layout.join(root, found.run_record)))
    return (record.get("integrity") or {}).get("root") or fs.unstrip_protocol(root)
