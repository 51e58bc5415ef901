"""Content credentials in every output image: IPTC DigitalSourceType in XMP.

Model fills are ``compositeWithTrainedAlgorithmicMedia`` (real pixels with a trained model's
fill pasted in); classical fills are ``algorithmicMedia``. The packet also names the recipe,
seed, variant and inpainter, so a file that leaves the dataset still says how it was made.
It holds nothing of the source (no image_id: a path may identify a patient) and nothing that
varies between runs, so the same inputs still give the same bytes under the same key.

The packet is spliced into the encoder's bytes (which stay byte-identical otherwise): a JPEG
APP1 segment after SOI, a PNG ``iTXt`` chunk ``XML:com.adobe.xmp`` after IHDR, a WebP ``XMP ``
chunk in the extended (VP8X) container.
"""

from __future__ import annotations

import re
import struct
import zlib
from xml.sax.saxutils import escape

IPTC_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
MODEL_FILL = "compositeWithTrainedAlgorithmicMedia"
CLASSICAL_FILL = "algorithmicMedia"
_JPEG_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_PNG_KEYWORD = b"XML:com.adobe.xmp"
# element (<Iptc4xmpExt:DigitalSourceType>URI<) or attribute (Iptc4xmpExt:DigitalSourceType="URI")
_TYPE = re.compile(rb'DigitalSourceType(?:>|\s*=\s*")' + re.escape(IPTC_TYPES.encode()) + rb"(\w+)")


def xmp_packet(source_type: str, fields: dict[str, str]) -> bytes:
    """An XMP packet with the IPTC DigitalSourceType and synthfill's own fields."""
    own = "".join(f"<synthfill:{k}>{escape(str(v))}</synthfill:{k}>" for k, v in fields.items())
    body = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about=""'
        ' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
        ' xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        ' xmlns:synthfill="https://synthfill.dev/ns/1.0/">'
        f"<Iptc4xmpExt:DigitalSourceType>{IPTC_TYPES}{source_type}</Iptc4xmpExt:DigitalSourceType>"
        "<xmp:CreatorTool>synthfill</xmp:CreatorTool>"
        f"{own}</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    return f'<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>{body}<?xpacket end="r"?>'.encode()


def embed_xmp(data: bytes, fmt: str, packet: bytes) -> bytes:
    """``data`` (an encoded image) with the XMP packet added; pixels untouched."""
    if fmt == "jpeg":
        return _jpeg(data, packet)
    if fmt == "png":
        return _png(data, packet)
    if fmt == "webp":
        return _webp(data, packet)
    raise ValueError(f"no XMP embedding for {fmt!r}")


def _jpeg(data: bytes, packet: bytes) -> bytes:
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    payload = _JPEG_XMP + packet
    if len(payload) + 2 > 0xFFFF:
        raise ValueError("XMP packet too large for one APP1 segment")
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def _png(data: bytes, packet: bytes) -> bytes:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError("not a PNG (no signature and IHDR)")
    ihdr_end = 8 + 12 + struct.unpack(">I", data[8:12])[0]
    # keyword, NUL, compression flag 0 and method 0, no language tag, no translated keyword
    chunk = b"iTXt" + _PNG_KEYWORD + b"\x00\x00\x00\x00\x00" + packet
    crc = struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF)
    return data[:ihdr_end] + struct.pack(">I", len(chunk) - 4) + chunk + crc + data[ihdr_end:]


def _webp(data: bytes, packet: bytes) -> bytes:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP (no RIFF/WEBP header)")
    chunks = data[12:]
    kind = chunks[:4]
    if kind == b"VP8X":
        flags = chunks[8] | 0x04  # the XMP flag
        head = chunks[:8] + bytes([flags]) + chunks[9:18]
        rest = chunks[18:]
    else:  # simple format: a VP8X header must come first to allow metadata chunks
        width, height = _webp_size(kind, chunks)
        canvas = struct.pack("<I", width - 1)[:3] + struct.pack("<I", height - 1)[:3]
        head = b"VP8X" + struct.pack("<I", 10) + bytes([0x04, 0, 0, 0]) + canvas
        rest = chunks
    xmp = b"XMP " + struct.pack("<I", len(packet)) + packet + (b"\x00" if len(packet) % 2 else b"")
    body = b"WEBP" + head + rest + xmp
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _webp_size(kind: bytes, chunks: bytes) -> tuple[int, int]:
    if kind == b"VP8 ":  # lossy: the frame header after the 3-byte tag and start code
        width, height = struct.unpack("<HH", chunks[14:18])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":  # lossless: 14-bit width-1 and height-1 after the signature byte
        bits = int.from_bytes(chunks[9:13], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ValueError(f"unknown WebP chunk {kind!r}")


def digital_source_type(data: bytes) -> str | None:
    """The IPTC DigitalSourceType term in an image's XMP (``None`` without one)."""
    found = _TYPE.search(data)
    return found.group(1).decode() if found else None


def source_type_for(trained_model: bool) -> str:
    return MODEL_FILL if trained_model else CLASSICAL_FILL
