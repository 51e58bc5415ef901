"""``pipeline preview``: a contact sheet and a self-contained HTML report of a committed version.

The contact sheet shows, per source: the source, then each variant's mask over it (red), and
below, one line per inpainter, each variant's output in the same column as its mask. The report
(one HTML file, images inlined, no script or font fetched from anywhere) holds the sheet, the
evaluation by mask-area bin (``pipeline evaluate`` runs first when the version has none) and the
run's throughput over time.

Written beside the version: ``versions/<N>-<run_id>/preview/contact_sheet.png`` and
``report.html`` (or into ``out``, a local folder).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pipelines import layout, versions
from pipelines.audit import Committed, open_committed
from pipelines.audit_inputs import Access
from pipelines.codec import decode_image, decode_mask
from pipelines.errors import RunError
from pipelines.evaluate import (
    EVALUATION,
    METRICS,
    SUMMARY,
    Recipes,
    row_file,
    source_groups,
    source_image,
)
from pipelines.manifest import Manifest, OutputSpec
from pipelines.report_html import render_report
from pipelines.storage import publish_bytes

PREVIEW = "preview"
TILE = 176  # tile height in pixels
LABEL = 18  # caption strip above each tile
OVERLAY = np.array([230, 30, 30], dtype=np.float64)


@dataclass(frozen=True)
class Preview:
    sheet_uri: str
    report_uri: str
    sources: int


def preview_dataset(
    output: OutputSpec,
    manifest: Manifest | None = None,
    *,
    sources: int = 8,
    out: Path | None = None,
) -> Preview:
    """Write the contact sheet of the first ``sources`` sources and the HTML report."""
    ds = open_committed(output)
    metrics, summary = _evaluation(ds, output, manifest)
    access, recipes = Access.of(manifest), Recipes(ds)
    groups = list(islice(source_groups(ds), sources))
    if not groups:
        raise RunError(f"{output.uri!r}: version {ds.version.version} has no rows to preview")
    sheet = contact_sheet(ds, groups, access, recipes)
    png = _png(sheet)
    html = render_report(ds.record, summary, metrics, png)
    return _write(ds, out, png, html, len(groups))


def contact_sheet(
    ds: Committed, groups: list[list[dict[str, Any]]], access: Access, recipes: Recipes
) -> Image.Image:
    blocks = [_block(ds, group, access, recipes) for group in groups]
    width = max(b.width for b in blocks)
    sheet = Image.new("RGB", (width, sum(b.height for b in blocks)), "white")
    y = 0
    for block in blocks:
        sheet.paste(block, (0, y))
        y += block.height
    return sheet


def _block(
    ds: Committed, group: list[dict[str, Any]], access: Access, recipes: Recipes
) -> Image.Image:
    """One source: the source and variant masks on top, each inpainter's outputs below."""
    source, note = source_image(group[0], access, recipes)
    variants = sorted({r["variant"] for r in group})
    labels = sorted({r["inpainter"] for r in group})
    at = {(r["variant"], r["inpainter"]): r for r in group}
    top = [_tile(source, group[0]["image_id"] if source is not None else f"source: {note}")]
    for v in variants:
        row = at[(v, labels[0])]
        mask = decode_mask(row_file(ds, row["mask_uri"]))
        top.append(_tile(_overlay(source, mask), f"v{v} mask {row['mask_fraction']:.0%}"))
    lines = [top]
    for label in labels:
        line = [_tile(None, label, fill=(255, 255, 255))]
        for v in variants:
            row = at.get((v, label))
            image = decode_image(row_file(ds, row["output_uri"])) if row else None
            line.append(_tile(image, f"{label} v{v}"))
        lines.append(line)
    return _grid(lines)


def _eight_bit_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def _overlay(source: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
    base = (
        _eight_bit_rgb(source).astype(np.float64)
        if source is not None and source.shape[:2] == mask.shape
        else np.full((*mask.shape, 3), 128.0)
    )
    base[mask] = 0.45 * base[mask] + 0.55 * OVERLAY
    return base.astype(np.uint8)


def _tile(
    image: np.ndarray | None, caption: str, fill: tuple[int, int, int] = (236, 236, 236)
) -> Image.Image:
    """A caption strip over the image scaled to TILE high (``fill`` when there is none)."""
    if image is None:
        picture = Image.new("RGB", (TILE, TILE), fill)
    else:
        picture = Image.fromarray(_eight_bit_rgb(image))
        scale = TILE / picture.height
        picture = picture.resize((max(1, round(picture.width * scale)), TILE), Image.LANCZOS)
    tile = Image.new("RGB", (picture.width, TILE + LABEL), "white")
    tile.paste(picture, (0, LABEL))
    ImageDraw.Draw(tile).text((3, 3), caption[: max(8, picture.width // 6)], fill=(20, 20, 20))
    return tile


def _grid(lines: list[list[Image.Image]], gap: int = 4) -> Image.Image:
    widths = [max(line[c].width for line in lines if c < len(line)) for c in range(len(lines[0]))]
    height = len(lines) * (TILE + LABEL + gap) + 3 * gap
    block = Image.new("RGB", (sum(widths) + gap * (len(widths) + 1), height), "white")
    for r, line in enumerate(lines):
        x = gap
        for c, tile in enumerate(line):
            block.paste(tile, (x, gap + r * (TILE + LABEL + gap)))
            x += widths[c] + gap
    ImageDraw.Draw(block).line([(0, height - 2), (block.width, height - 2)], fill=(180, 180, 180))
    return block


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _evaluation(
    ds: Committed, output: OutputSpec, manifest: Manifest | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The version's evaluation (made now when it has none, or only of its first sources)."""
    folder = layout.join(ds.root, ds.version.folder + "/" + EVALUATION)
    path = layout.join(folder, SUMMARY)
    if not ds.fs.exists(path) or json.loads(ds.fs.cat_file(path)).get("limit") is not None:
        from pipelines.evaluate import evaluate_dataset

        evaluate_dataset(output, manifest)
    summary = json.loads(ds.fs.cat_file(layout.join(folder, SUMMARY)))
    with ds.fs.open(layout.join(folder, METRICS), "rb") as handle:
        table = versions.parquet_file(handle).read(use_threads=False)
    return table.to_pylist(), summary


def _write(ds: Committed, out: Path | None, png: bytes, html: bytes, count: int) -> Preview:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "contact_sheet.png").write_bytes(png)
        (out / "report.html").write_bytes(html)
        return Preview(str(out / "contact_sheet.png"), str(out / "report.html"), count)
    folder = layout.join(ds.root, ds.version.folder + "/" + PREVIEW)
    ds.fs.makedirs(folder, exist_ok=True)
    sheet, report = layout.join(folder, "contact_sheet.png"), layout.join(folder, "report.html")
    publish_bytes(ds.fs, sheet, png)
    publish_bytes(ds.fs, report, html)
    return Preview(ds.fs.unstrip_protocol(sheet), ds.fs.unstrip_protocol(report), count)
