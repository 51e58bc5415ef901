"""Procedural retail shelf scenes with exact product boxes (written out by pipelines.samples).

Real shelf photos with box labels are not licence-clean, so the retail demo draws its own:
shelf boards, runs of touching product facings (boxes, cans, bottles) with a printed label,
empty slots, a lighting gradient and mild sensor noise so an inpainter has texture to match.
Everything is a pure function of the scene index: no clock, no global RNG, no fonts from the
system, so the files are byte-for-byte reproducible.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipelines.seeding import variant_seed

SHELF_COUNT = 8
WIDTH, HEIGHT = 1024, 768
SHELF_SEED = 20261122
JPEG_QUALITY = 90
_SYLLABLES = ("KA", "LO", "MI", "ZU", "TE", "RA", "NO", "VI", "SE", "DA", "PU", "BEL", "OR", "FI")
_WALLS = ((206, 204, 198), (222, 214, 196), (188, 196, 204), (214, 216, 218))


@dataclass(frozen=True)
class Facing:
    """One product facing; ``x2``/``y2`` are exclusive, so width = x2 - x1 (COCO w)."""

    x1: int
    y1: int
    x2: int
    y2: int


@dataclass
class ShelfScene:
    """A rendered scene: the image, its boxes, which facing owns each pixel, the lit wall."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8
    facings: list[Facing]
    owner: np.ndarray  # (H, W) int32: 0 = no product, i + 1 = facings[i]
    background: np.ndarray  # (H, W, 3) float: the back wall as lit, before noise


def shelf_name(index: int) -> str:
    """File name of scene ``index``."""
    return f"shelf_{index:03d}.jpg"


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Baseline JPEG without EXIF, ICC or comments (libjpeg output is deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()


def render_shelf(index: int) -> ShelfScene:
    """Draw scene ``index``: a pure function of the index and ``SHELF_SEED``."""
    name = shelf_name(index)
    # A keyed hash of (seed, name), not the index, so adding scenes never changes old ones.
    rng = np.random.Generator(np.random.PCG64(variant_seed(SHELF_SEED, name, 0)))
    wall = _WALLS[int(rng.integers(len(_WALLS)))]
    canvas = _back_wall(wall)
    back = np.asarray(canvas, dtype=np.float64)
    owner = np.zeros((HEIGHT, WIDTH), dtype=np.int32)
    facings: list[Facing] = []
    boards, post = _layout(rng)
    wood = bool(rng.random() < 0.5)
    runs: list[Facing] = []  # the first facing of each run gets a price tag
    for (_, top), (bottom, _) in zip(boards[:-1], boards[1:], strict=True):
        row = (post, top, WIDTH - post, bottom)
        runs += _fill_row(canvas, owner, facings, rng, row, wall)
    draw = ImageDraw.Draw(canvas)
    for y0, y1 in boards:
        _draw_board(canvas, rng, (0, y0, WIDTH, y1), wood)
    _draw_price_tags(draw, rng, runs)
    for x0 in (0, WIDTH - post):
        _draw_post(draw, (x0, 0, x0 + post, HEIGHT))
    light = _lighting(rng, boards)
    pixels = np.asarray(canvas, dtype=np.float64) * light[..., None]
    pixels += rng.normal(0.0, 2.0, pixels.shape)  # mild sensor noise
    image = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return ShelfScene(name, image, facings, owner, back * light[..., None])


def _back_wall(wall: tuple[int, int, int]) -> Image.Image:
    """The gondola's perforated back panel: texture an inpainter must continue into gaps."""
    canvas = Image.new("RGB", (WIDTH, HEIGHT), wall)
    draw = ImageDraw.Draw(canvas)
    hole = tuple(int(c * 0.55) for c in wall)
    for y in range(9, HEIGHT, 25):
        for x in range(9, WIDTH, 25):
            draw.ellipse((x, y, x + 3, y + 3), fill=hole)
    return canvas


def _layout(rng: np.random.Generator) -> tuple[list[tuple[int, int]], int]:
    """Shelf boards as (y0, y1) top to bottom (the first is the shelf above); the post width."""
    rows = int(rng.integers(3, 6))
    top = int(rng.integers(14, 28))
    thick = int(rng.integers(20, 28))
    pitch = (HEIGHT - top) / rows
    floors = [round(top + (r + 1) * pitch) - thick for r in range(rows)]
    boards = [(0, top)] + [(y, min(HEIGHT, y + thick)) for y in floors]
    return boards, int(rng.integers(14, 30))


def _fill_row(
    canvas: Image.Image,
    owner: np.ndarray,
    facings: list[Facing],
    rng: np.random.Generator,
    bounds: tuple[int, int, int, int],
    wall: tuple[int, int, int],
) -> list[Facing]:
    """Runs of identical facings standing on the board, touching, with a few empty slots.

    Appends every facing to ``facings`` and returns the first facing of each run.
    """
    x, top, right, floor = bounds
    clear = floor - top
    runs: list[Facing] = []
    while x < right - 24:
        if rng.random() < 0.1:  # out of stock: an empty slot shows the back wall
            x += int(rng.integers(30, 120))
            continue
        product = _product(rng, clear, wall)
        tile = _draw_product(product, rng)  # one design per run, like the same SKU
        width, height = tile.size
        count = min(int(rng.integers(1, 6)), (right - x) // (width + 1))
        if count == 0:
            break  # the end of the row stays empty, as on real shelves
        for i in range(count):
            box = Facing(x, floor - height, x + width, floor)
            _paste(canvas, owner, tile, box, len(facings) + 1)
            if i == 0:
                runs.append(box)
            facings.append(box)
            x += width + int(rng.integers(0, 2))  # facings touch their neighbours
        x += int(rng.integers(0, 4))
    return runs


def _product(rng: np.random.Generator, clear: int, wall: tuple[int, int, int]) -> dict:
    """A product type: kind, size, body and label colours, brand text, label style."""
    kind = ("box", "box", "can", "bottle")[int(rng.integers(4))]
    widths = {"box": (44, 112), "can": (34, 58), "bottle": (34, 62)}[kind]
    low = {"box": 0.55, "can": 0.45, "bottle": 0.7}[kind]
    height = int(clear * rng.uniform(low, 0.94))
    width = int(rng.integers(*widths))
    if kind != "box":
        height = min(height, int(width * rng.uniform(1.3, 3.2)))
    brand = "".join(_SYLLABLES[int(i)] for i in rng.integers(len(_SYLLABLES), size=2))
    return {
        "kind": kind,
        "size": (width, max(height, 40)),
        "body": _colour(rng, avoid=wall),
        "band": _colour(rng, avoid=wall),
        "brand": brand,
        "stripes": bool(rng.random() < 0.4),
    }


def _colour(rng: np.random.Generator, avoid: tuple[int, int, int]) -> tuple[int, int, int]:
    """A packaging colour that stays clearly distinct from the back wall."""
    while True:
        hsv = (rng.random(), rng.uniform(0.35, 0.95), rng.uniform(0.3, 0.95))
        rgb = tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(*hsv))
        if sum(abs(a - b) for a, b in zip(rgb, avoid, strict=True)) > 150:
            return rgb  # type: ignore[return-value]


def _draw_product(product: dict, rng: np.random.Generator) -> Image.Image:
    """One facing as an RGBA tile whose alpha is exactly the product's silhouette."""
    width, height = product["size"]
    tile = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    body = (*product["body"], 255)
    if product["kind"] == "bottle":
        neck = max(6, width // 3)
        left = (width - neck) // 2
        shoulder = height // 4
        draw.rectangle((left, 0, left + neck - 1, shoulder), fill=body)
        draw.rectangle((left, 0, left + neck - 1, max(4, height // 14)), fill=(40, 40, 40, 255))
        draw.rounded_rectangle((0, shoulder, width - 1, height - 1), radius=width // 3, fill=body)
        draw.rectangle((0, height // 2, width - 1, height - 1), fill=body)
    else:
        draw.rectangle((0, 0, width - 1, height - 1), fill=body)
    if product["kind"] == "can":
        for y in (0, height - 4):
            draw.rectangle((0, y, width - 1, y + 3), fill=(176, 178, 182, 255))
    _draw_label(tile, product, rng)
    return _shade(tile, cylinder=product["kind"] != "box")


def _draw_label(tile: Image.Image, product: dict, rng: np.random.Generator) -> None:
    """A coloured band with the brand name, and sometimes barcode-like stripes under it."""
    width, height = tile.size
    band_h = max(14, int(height * rng.uniform(0.18, 0.3)))
    band_y = int(height * rng.uniform(0.45, 0.62)) - band_h // 2
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, band_y, width - 1, band_y + band_h - 1), fill=(*product["band"], 255))
    ink = (20, 20, 20, 255) if sum(product["band"]) > 380 else (245, 245, 240, 255)
    _draw_text(tile, product["brand"], (width // 2, band_y + band_h // 2), ink)
    if product["stripes"] and band_y + band_h + 14 < height - 6:
        x, y = width // 2 - 10, band_y + band_h + 4
        draw.rectangle((x - 2, y - 1, x + 22, y + 10), fill=(250, 250, 250, 255))
        for dx in np.cumsum(rng.integers(1, 4, size=12)):
            if dx < 20:
                draw.line((x + int(dx), y, x + int(dx), y + 8), fill=(15, 15, 15, 255))


def _draw_text(tile: Image.Image, text: str, centre: tuple[int, int], ink: tuple) -> None:
    """Pillow's built-in bitmap font, doubled where it fits: identical on every machine."""
    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(text)
    stamp = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(stamp).text((-left, -top), text, font=font, fill=255)
    if stamp.width * 2 <= tile.width - 4 and stamp.height * 2 <= tile.height // 4:
        stamp = stamp.resize((stamp.width * 2, stamp.height * 2), Image.Resampling.NEAREST)
    placed = Image.new("L", tile.size, 0)
    placed.paste(stamp, (centre[0] - stamp.width // 2, centre[1] - stamp.height // 2))
    # Ink only where the product is, so the silhouette (and its box) never changes.
    inside = np.asarray(placed) > 0
    inside &= np.asarray(tile.getchannel("A")) > 0
    tile.paste(ink, mask=Image.fromarray(inside.astype(np.uint8) * 255))


def _shade(tile: Image.Image, cylinder: bool) -> Image.Image:
    """Round packs darken towards both edges; boxes show a darker side face on the right."""
    rgba = np.asarray(tile, dtype=np.float64).copy()
    width = tile.width
    u = (np.arange(width) + 0.5) / width
    round_pack = 0.62 + 0.38 * np.sin(np.pi * u) ** 0.6
    profile = round_pack if cylinder else np.where(u > 0.9, 0.78, 1.0)
    rgba[..., :3] *= profile[None, :, None]
    return Image.fromarray(np.clip(np.rint(rgba), 0, 255).astype(np.uint8), "RGBA")


def _paste(
    canvas: Image.Image, owner: np.ndarray, tile: Image.Image, box: Facing, ident: int
) -> None:
    alpha = tile.getchannel("A")
    canvas.paste(tile.convert("RGB"), (box.x1, box.y1), alpha)
    region = owner[box.y1 : box.y2, box.x1 : box.x2]
    region[np.asarray(alpha) > 0] = ident


def _draw_board(
    canvas: Image.Image, rng: np.random.Generator, rect: tuple[int, int, int, int], wood: bool
) -> None:
    """A shelf board's front edge: wood grain or brushed metal, lit from above."""
    x0, y0, x1, y1 = rect
    height, width = y1 - y0, x1 - x0
    if wood:
        base = np.array([150.0, 104.0, 62.0]) * rng.uniform(0.85, 1.1)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
        # Grain runs along the board: wavy horizontal lines, not stripes across it.
        wave = 1.5 * np.sin(xs / rng.uniform(40, 120) + rng.uniform(0, 2 * np.pi))
        grain = np.sin(2 * np.pi * ys / rng.uniform(3, 6) + wave)
        face = base[None, None, :] * (1.0 + 0.07 * grain[..., None])
    else:
        face = np.full((height, width, 3), rng.uniform(150, 185))
        face[: min(3, height)] += 40.0  # the lit front lip
    face[-min(2, height) :] *= 0.6
    canvas.paste(Image.fromarray(np.clip(np.rint(face), 0, 255).astype(np.uint8)), (x0, y0))


def _draw_price_tags(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, runs: list[Facing]
) -> None:
    """A white price label on the board's edge under the first facing of each run."""
    font = ImageFont.load_default_imagefont()
    for box in runs:
        price = f"{int(rng.integers(0, 10))}.{int(rng.integers(0, 100)):02d}"
        draw.rectangle((box.x1 + 2, box.y2 + 4, box.x1 + 32, box.y2 + 17), fill=(246, 246, 240))
        draw.text((box.x1 + 5, box.y2 + 5), price, font=font, fill=(30, 30, 30))


def _draw_post(draw: ImageDraw.ImageDraw, rect: tuple[int, int, int, int]) -> None:
    """A side upright with slot holes, as on gondola shelving."""
    x0, y0, x1, y1 = rect
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(120, 124, 130))
    centre = (x0 + x1) // 2
    for y in range(y0 + 6, y1, 24):
        draw.rectangle((centre - 2, y, centre + 1, y + 9), fill=(52, 54, 58))


def _lighting(rng: np.random.Generator, boards: list[tuple[int, int]]) -> np.ndarray:
    """Ceiling light falling off to the sides and downwards, with a shadow under each board."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    centre = rng.uniform(0.3, 0.7) * WIDTH
    light = 1.0 - rng.uniform(0.12, 0.3) * ((xs - centre) / WIDTH) ** 2 * 4
    light *= 1.0 - rng.uniform(0.05, 0.2) * ys / HEIGHT
    for _, y1 in boards[:-1]:
        below = ys - y1
        light *= np.where(below >= 0, 1.0 - 0.3 * np.exp(-below / 14.0), 1.0)
    return light
