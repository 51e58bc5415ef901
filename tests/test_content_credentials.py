"""Every output image says it was made by an algorithm: IPTC DigitalSourceType in XMP.

Outputs are made by the worker's own code (tests/inprocess.py) and read back with Pillow, whose
XMP packet is parsed as XML here: our own byte reader is checked against it, not trusted.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_text, photo_like
from inprocess import process
from PIL import Image

from pipelines.codec import decode_image, encode_image
from pipelines.content_credentials import (
    CLASSICAL_FILL,
    IPTC_TYPES,
    MODEL_FILL,
    digital_source_type,
    embed_xmp,
    xmp_packet,
)

IPTC_EXT = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}"
SYNTHFILL = "{https://synthfill.dev/ns/1.0/}"


def pillow_xmp(data: bytes) -> dict[str, str]:
    """The XMP fields Pillow finds in an image, parsed as XML."""
    image = Image.open(io.BytesIO(data))
    image.load()
    packet = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    assert packet, f"Pillow finds no XMP in this {image.format}"
    text = packet.decode() if isinstance(packet, bytes) else packet
    root = ET.fromstring(text[text.index("<x:xmpmeta") : text.index("</x:xmpmeta>") + 12])
    description = root.find(".//{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Description")
    return {child.tag: child.text for child in description}


@pytest.mark.parametrize(
    ("fmt", "channels", "dtype"),
    [("jpeg", 3, np.uint8), ("png", 3, np.uint8), ("png", 1, np.uint8), ("png", 1, np.uint16)],
)
def test_outputs_carry_the_digital_source_type(tmp_path: Path, fmt, channels, dtype):
    images = tmp_path / "images"
    images.mkdir()
    pixels = photo_like(48, 64, seed=1, channels=channels)
    if dtype == np.uint16:
        pixels = pixels.astype(np.uint16) * 257
    (images / "a.png").write_bytes(encode_image(pixels, "png"))
    path = tmp_path / "m.yaml"
    text = manifest_text(images, tmp_path / "out").replace("format: png", f"format: {fmt}")
    path.write_text(text)
    rows = process(path)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for row in rows:
        data = Path(row["output_uri"].removeprefix("file://")).read_bytes()
        fields = pillow_xmp(data)
        assert fields[f"{IPTC_EXT}DigitalSourceType"] == IPTC_TYPES + CLASSICAL_FILL
        assert fields[f"{SYNTHFILL}seed"] == str(row["seed"])
        assert fields[f"{SYNTHFILL}manifest_sha256"] == row["manifest_sha256"]
        assert digital_source_type(data) == CLASSICAL_FILL
        assert decode_image(data).dtype == dtype


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_the_splice_leaves_pixels_and_the_rest_of_the_file_alone(fmt):
    pixels = photo_like(40, 56, seed=2)
    plain = encode_image(pixels, fmt)
    marked = embed_xmp(plain, fmt, xmp_packet(MODEL_FILL, {"seed": "7"}))
    assert np.array_equal(decode_image(plain), decode_image(marked))
    assert len(marked) > len(plain) and digital_source_type(plain) is None
    assert pillow_xmp(marked)[f"{IPTC_EXT}DigitalSourceType"] == IPTC_TYPES + MODEL_FILL
    # the same inputs give the same bytes (keys are content-addressed, retries rewrite them)
    assert marked == embed_xmp(plain, fmt, xmp_packet(MODEL_FILL, {"seed": "7"}))
