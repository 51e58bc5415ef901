"""The dataset card of a version: README.md with the Hub's YAML header, then prose.

The header (configs/data_files per split, features, split sizes, licence, tags) is what
``datasets.load_dataset(<dataset folder>)`` and the Hub read; the body says what the dataset
is, how it was made and how to load it, for people. ``hf_dataset.dataset_card`` is the entry
point the commit calls.
"""

from __future__ import annotations

from typing import Any

import yaml

from pipelines.hf_features import card_features
from pipelines.versions import version_dir


def render(
    record: dict[str, Any],
    shards: dict[str, list[str]],
    counts: dict[str, int],
    sizes: dict[str, int],
    *,
    license: str = "unknown",
    croissant: str | None = None,
) -> bytes:
    """The card's bytes; arguments as ``hf_dataset.dataset_card``."""
    header = {
        "license": license,
        "pretty_name": record["name"],
        "tags": ["synthetic", "inpainting", "image", "synthfill"],
        "size_categories": [_size_category(sum(counts.values()))],
        "configs": [{"config_name": "default", "data_files": _data_files(shards)}],
        "dataset_info": {
            "features": card_features(),
            "splits": [
                {"name": s, "num_bytes": sizes[s], "num_examples": counts[s]} for s in shards
            ],
            "dataset_size": sum(sizes.values()),
        },
    }
    if not shards:  # no rows: a config without data files would not load either
        del header["configs"]
    body = _card_body(record, counts, sizes, croissant)
    return ("---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + body).encode()


def _data_files(shards: dict[str, list[str]]) -> list[dict[str, str]]:
    return [
        {"split": split, "path": f"{keys[0].rsplit('/', 1)[0]}/{split}-*.parquet"}
        for split, keys in shards.items()
    ]


def _size_category(rows: int) -> str:
    """The Hub's ``size_categories`` value for a row count."""
    bounds = ["1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T"]
    for i, bound in enumerate(bounds):
        if rows < 1000 * 10**i:
            return f"n<{bound}" if i == 0 else f"{bounds[i - 1]}<n<{bound}"
    return "n>1T"


_EMBEDDED = (
    "The images and masks are embedded in the shards (`image.bytes`): they are self-contained."
)
_BY_PATH = (
    "The shards name each image and mask by path (`image.path`); the files stay in the "
    "dataset's `images/` and `masks/` (a copy elsewhere needs `output.embed_images: true`)."
)


def _methods(recipe: dict[str, Any]) -> tuple[str, str]:
    """The recipe's inpainter labels and mask generator kinds, for a sentence."""
    fills = recipe.get("inpainter") or []
    fills = fills if isinstance(fills, list) else [fills]
    labels = ", ".join(f.get("name") or f.get("kind", "?") for f in fills)
    return labels, " + ".join(m.get("kind", "?") for m in recipe.get("masks", []))


def _card_body(
    record: dict[str, Any], counts: dict[str, int], sizes: dict[str, int], croissant: str | None
) -> str:
    recipe = record.get("recipe") or {}
    fills, masks = _methods(recipe)
    output = ((record.get("manifest") or {}).get("resolved") or {}).get("output") or {}
    folder = f"{version_dir(record['version'])}-{record['run_id']}"
    pattern = (recipe.get("split") or {}).get("group_pattern")
    group = f"`split.group_pattern` `{pattern}`" if pattern else "the image_id"
    table = "\n".join(f"| {s} | {counts[s]} | {sizes[s]:,} |" for s in counts)
    where = _EMBEDDED if output.get("embed_images") else _BY_PATH
    extra = f", and Croissant 1.0 metadata (`{croissant}`)" if croissant else ""
    return f"""# {record["name"]}

Synthetic images made from real images by inpainting with synthfill: {masks} masks filled by {fills},
{recipe.get("variants")} seeded variants per source image.
Version {record["version"]} of the dataset, committed by run `{record["run_id"]}`
with synthfill `{record.get("code_version")}`.

| split | rows | shard bytes |
|---|---|---|
{table}

Splits come from a hash of a group key ({group}),
so the variants of one source never straddle splits.
{where}
Every image carries IPTC DigitalSourceType in XMP (`compositeWithTrainedAlgorithmicMedia` for
model fills, `algorithmicMedia` for classical ones).

## Loading

```python
from datasets import load_dataset

ds = load_dataset("path/to/dataset")  # this card's folder; image and mask decode as PIL images

import pandas as pd
import pyarrow.dataset as pads

shards = pd.read_parquet("path/to/dataset/{folder}/data")  # or one split: data/train-*.parquet
index = pads.dataset("path/to/dataset/{folder}/index.parquet")  # every provenance column

from pipelines import read_dataset  # synthfill's reader: committed data only, any fsspec URL
from pipelines.reader import ImageDataset  # a torch Dataset: image, mask, boxes, labels, row
```

## Provenance

- recipe (`manifest_sha256`): `{record["manifest_sha256"]}`, stored as
  `recipes/{record["manifest_sha256"]}.json`; run seed {recipe.get("seed")}
- Merkle root over every output and mask: `{(record.get("integrity") or {}).get("merkle_root")}`
- `{folder}/`: the index, the quarantine table, the run record `run.json` (resolved
  manifest, package versions, weights, counts, timings), OpenLineage events
  (`openlineage.jsonl`) and W3C PROV-JSON (`prov.json`){extra}
- `pipeline audit` re-checks every hash; `pipeline lineage DATASET IMAGE_ID` shows how a row was made.
"""
