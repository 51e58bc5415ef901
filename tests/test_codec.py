"""The codec guard: every bad input gets its reason, every good one decodes the same way twice."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import badinputs
import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from pipelines import codec
from pipelines.codec import decode_image, decode_mask, encode_image, encode_mask
from pipelines.errors import ItemError, Reason

ROOT = Path(__file__).resolve().parents[1]


def reason_of(data: bytes, **options: object) -> Reason:
    with pytest.raises(ItemError) as caught:
        decode_image(data, **options)
    return caught.value.reason


def png_chunk_types(data: bytes) -> list[bytes]:
    kinds, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kinds.append(data[offset + 4 : offset + 8])
        offset += 12 + length
    return kinds


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    folder = tmp_path_factory.mktemp("bad")
    return folder, badinputs.write_bad_inputs(folder)


def test_every_fixture_gets_its_reason_or_decodes(fixtures) -> None:
    folder, expected = fixtures
    for name, reason in expected.items():
        data = (folder / name).read_bytes()
        if reason is not None:
            assert reason_of(data, name=name).value == reason, name
            continue
        pixels = decode_image(data, name=name)
        assert pixels.ndim == 3 and pixels.shape[2] in (1, 3), name
        assert pixels.dtype in (np.uint8, np.uint16) and pixels.flags.c_contiguous, name
        assert pixels.flags.writeable, name


def test_error_detail_keeps_the_message_and_is_stable(fixtures) -> None:
    folder, _ = fixtures
    for name in ("malformed.tif", "text_named.jpg", "truncated.png"):
        data = (folder / name).read_bytes()
        details = set()
        for _ in range(2):
            with pytest.raises(ItemError) as caught:
                decode_image(data, name=name)
            details.add(caught.value.detail)
        (detail,) = details
        assert detail.startswith(f"{name}: ") and " at 0x" not in detail
    with pytest.raises(ItemError, match="TypeError"):
        decode_image((folder / "malformed.tif").read_bytes())


@pytest.mark.matrix("I4")
def test_bomb_is_rejected_fast_with_little_memory(tmp_path: Path, matrix) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(badinputs.png_bomb(20_000, 20_000))
    assert len(bomb.read_bytes()) < 100_000
    # A fresh process, so peak RSS measures this decode and nothing before it.
    script = textwrap.dedent(
        """
        import json, resource, sys, time
        from pipelines.codec import decode_image
        from pipelines.errors import ItemError
        decode_image(open(sys.argv[2], "rb").read())  # warm up imports and plugins
        data = open(sys.argv[1], "rb").read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        try:
            decode_image(data)
            reason = None
        except ItemError as exc:
            reason = exc.reason.value
        seconds = time.perf_counter() - start
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({"reason": reason, "seconds": seconds, "rss_kib": grown}))
        """
    )
    small = tmp_path / "small.png"
    small.write_bytes(badinputs.encoded(badinputs.photo(), "PNG"))
    run = subprocess.run(
        [sys.executable, "-c", script, str(bomb), str(small)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    figures = json.loads(run.stdout)
    assert figures["reason"] == Reason.TOO_MANY_PIXELS.value
    assert figures["seconds"] < 1.0
    assert figures["rss_kib"] < 100 * 1024
    matrix.record(
        reason=figures["reason"],
        seconds=round(figures["seconds"], 4),
        peak_rss_delta_mb=round(figures["rss_kib"] / 1024, 1),
        bomb_bytes=len(bomb.read_bytes()),
        declared_pixels=20_000 * 20_000,
    )


@pytest.mark.matrix("I3")
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_cut_files_are_quarantined_or_identical(fmt: str, matrix) -> None:
    data = badinputs.encoded(badinputs.photo(), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    whole = decode_image(data)
    cuts = sorted(
        set(range(1, len(data), max(1, len(data) // 150))) | set(range(len(data) - 16, len(data)))
    )
    identical = quarantined = 0
    different = []
    for cut in cuts:
        try:
            pixels = decode_image(data[:cut])
        except ItemError as exc:
            # Below the 8-byte signature the bytes cannot be told apart from non-images.
            allowed = {Reason.DECODE_ERROR} | ({Reason.NOT_AN_IMAGE} if cut < 8 else set())
            assert exc.reason in allowed, (cut, exc)
            quarantined += 1
            continue
        if np.array_equal(pixels, whole):
            identical += 1
        else:
            different.append(cut)
    matrix.record(
        format=fmt,
        cuts=len(cuts),
        quarantined=quarantined,
        identical=identical,
        silently_different=len(different),
    )
    assert different == [], f"cuts at {different[:10]} decoded to different pixels"
    assert identical + quarantined == len(cuts)
    if fmt == "PNG":
        assert identical > 0  # losing only IEND costs no pixels


def test_sixteen_bit_gray_is_kept_without_clipping() -> None:
    ramp = badinputs.gray16_ramp()
    pixels = decode_image(badinputs.encoded(ramp, "PNG"))
    assert pixels.dtype == np.uint16 and pixels.shape == (256, 256, 1)
    assert np.array_equal(pixels[..., 0], ramp)
    levels = pixels.ravel()
    assert len(np.unique(levels)) >= 200 and np.all(np.diff(levels.astype(np.int64)) >= 0)
    # The values Pillow's own convert("L") would clip to 0, 255, 255, 255.
    probe = np.array([[0, 1000, 30000, 65535]], dtype=np.uint16)
    for stored in (probe, probe.astype(">u2")):  # little- and big-endian 16-bit TIFF
        out = decode_image(badinputs.encoded(Image.fromarray(stored), "TIFF"))
        assert out.dtype == np.uint16 and out[0, :, 0].tolist() == [0, 1000, 30000, 65535]


def test_32_bit_and_float_pixels() -> None:
    fits = np.array([[0, 70, 65535]], dtype=np.int32)
    out = decode_image(badinputs.encoded(Image.fromarray(fits), "TIFF"))
    assert out.dtype == np.uint16 and out[0, :, 0].tolist() == [0, 70, 65535]
    wide = np.array([[-1, 70, 70000]], dtype=np.int32)
    assert reason_of(badinputs.encoded(Image.fromarray(wide), "TIFF")) == Reason.UNSUPPORTED_FORMAT
    floats = np.array([[0.0, 0.5]], dtype=np.float32)
    floats_tiff = badinputs.encoded(Image.fromarray(floats), "TIFF")
    assert reason_of(floats_tiff) == Reason.UNSUPPORTED_FORMAT


def test_exif_orientations_display_upright_and_leave_no_exif() -> None:
    files = badinputs.exif_oriented_jpegs()
    reference = decode_image(files[1])
    assert np.abs(reference.astype(int) - badinputs.upright_blocks()).max() <= 3
    for orientation, data in files.items():
        pixels = decode_image(data)
        assert np.array_equal(pixels, reference), f"orientation {orientation}"
        for fmt in ("jpeg", "png", "webp"):
            out = encode_image(pixels, fmt)
            assert b"Exif" not in out and not Image.open(io.BytesIO(out)).getexif()


def test_awkward_modes_convert_deterministically(fixtures) -> None:
    folder, _ = fixtures
    outputs = {}
    for name in ("cmyk.jpg", "palette_transparent.png", "gray_alpha.png", "bilevel.png"):
        data = (folder / name).read_bytes()
        first, second = decode_image(data), decode_image(data)
        assert np.array_equal(first, second) and first.dtype == np.uint8, name
        outputs[name] = first
    assert outputs["cmyk.jpg"].shape == (64, 96, 3)
    assert np.abs(outputs["cmyk.jpg"].astype(int) - badinputs.photo()).mean() < 8
    palette = outputs["palette_transparent.png"]
    assert palette.shape == (24, 32, 3) and (palette[:, ::4] == 255).all()  # index 0: clear
    assert palette[0, 1].tolist() == [200, 30, 30]
    assert np.array_equal(outputs["bilevel.png"][..., 0], badinputs.bilevel() * np.uint8(255))


def test_alpha_is_composited_over_white() -> None:
    gray_alpha = badinputs.gray_alpha()
    out = decode_image(badinputs.encoded(Image.fromarray(gray_alpha, "LA"), "PNG"))
    alpha = gray_alpha[..., 1:].astype(float)
    expected = np.round(40 * alpha / 255 + 255 * (1 - alpha / 255))
    assert out.shape == (24, 32, 1) and np.abs(out - expected).max() <= 1
    rgba = badinputs.rgba()
    out = decode_image(badinputs.encoded(rgba, "PNG"))
    alpha = rgba[..., 3:].astype(float)
    expected = np.round(rgba[..., :3] * alpha / 255 + 255 * (1 - alpha / 255))
    assert out.shape == (24, 32, 3) and np.abs(out - expected).max() <= 1
    assert (out[0] == 255).all()


def test_cv2_fast_path_matches_pillow() -> None:
    openers = codec._openers(codec.ALLOWED_FORMATS)
    photo = badinputs.photo(160, 120)
    cases = [
        badinputs.encoded(photo, "JPEG", quality=90),
        badinputs.encoded(photo, "JPEG", quality=75, subsampling=0),
        badinputs.encoded(photo, "JPEG", progressive=True),
        badinputs.encoded(photo[..., 0], "JPEG"),
        cv2.imencode(".jpg", photo)[1].tobytes(),
        badinputs.exif_oriented_jpegs()[1],
    ]
    for data in cases:
        fast = codec._decode_with_cv2(data, codec._open_checked(data, openers, 10**8))
        slow = codec._decode_with_pillow(codec._open_checked(data, openers, 10**8))
        assert fast is not None and np.array_equal(fast, slow)
    rotated = badinputs.exif_oriented_jpegs()[6]
    assert codec._decode_with_cv2(rotated, codec._open_checked(rotated, openers, 10**8)) is None


def test_our_limit_is_authoritative_not_pillows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 96 x 64 is over twice this
    photo = badinputs.photo()
    for fmt in ("JPEG", "PNG", "BMP"):
        data = badinputs.encoded(photo, fmt)
        assert decode_image(data).shape == (64, 96, 3), fmt
        assert reason_of(data, max_pixels=6000) == Reason.TOO_MANY_PIXELS
    tiff = badinputs.encoded(photo, "TIFF")
    assert reason_of(tiff) == Reason.TOO_MANY_PIXELS  # Pillow's TIFF decoder checks its own
    codec.raise_pillow_pixel_limit(10_000)
    assert decode_image(tiff).shape == (64, 96, 3)


def test_format_allow_list_and_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    tiff = badinputs.encoded(badinputs.photo(), "TIFF")
    assert reason_of(tiff, formats=frozenset({"JPEG", "PNG"})) == Reason.UNSUPPORTED_FORMAT
    gif = badinputs.animated_gif()
    assert decode_image(gif, formats=frozenset({"GIF"})).shape == (24, 32, 3)
    with pytest.raises(ValueError, match="unknown image formats"):
        decode_image(tiff, formats=frozenset({"NOPE"}))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode_image(tiff)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF tag warnings while fuzzing
def test_mutated_files_never_escape_the_guard() -> None:
    rng = np.random.default_rng(11)
    seeds = [
        badinputs.malformed_tiff(),
        badinputs.encoded(badinputs.photo(32, 24), "TIFF"),
        badinputs.encoded(badinputs.photo(32, 24), "JPEG"),
        badinputs.encoded(badinputs.photo(32, 24), "PNG"),
        badinputs.encoded(badinputs.photo(32, 24), "WEBP"),
        badinputs.encoded(badinputs.photo(32, 24), "BMP"),
    ]
    for seed in seeds:
        for _ in range(60):
            data = bytearray(seed)
            for where in rng.integers(0, min(len(data), 160), size=rng.integers(1, 4)):
                data[where] = int(rng.integers(0, 256))
            try:
                # A small limit: a mutated header must not make the test allocate gigabytes.
                pixels = decode_image(bytes(data), max_pixels=1_000_000)
            except ItemError as exc:
                assert isinstance(exc.reason, Reason)
                continue
            assert pixels.ndim == 3 and pixels.shape[2] in (1, 3)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_encode_is_deterministic_and_bare(fmt: str) -> None:
    photo = badinputs.photo()
    for pixels in (photo, photo[..., 0], photo[..., :1]):
        out = encode_image(pixels, fmt)
        assert out == encode_image(pixels.copy(), fmt)
        decoded = decode_image(out)
        gray = pixels.ndim == 2 or pixels.shape[2] == 1
        assert decoded.shape == (64, 96, 1 if gray and fmt != "webp" else 3)  # WebP has no gray
        if fmt == "png":
            assert np.array_equal(
                decoded.reshape(pixels.shape[:2] + (-1,)), pixels.reshape(decoded.shape)
            )
            assert set(png_chunk_types(out)) == {b"IHDR", b"IDAT", b"IEND"}
        if fmt == "jpeg":
            info = Image.open(io.BytesIO(out)).info
            assert not {"exif", "xmp", "icc_profile"} & set(info) and b"\xff\xe1" not in out
        if fmt == "webp":
            assert b"EXIF" not in out and b"XMP " not in out


def test_encode_sixteen_bit_and_rejections() -> None:
    ramp = badinputs.gray16_ramp()
    assert np.array_equal(decode_image(encode_image(ramp, "png"))[..., 0], ramp)
    for fmt in ("jpeg", "webp"):
        with pytest.raises(ValueError, match="16-bit"):
            encode_image(ramp, fmt)
    with pytest.raises(ValueError):
        encode_image(np.zeros((4, 4, 2), np.uint8), "png")
    with pytest.raises(ValueError):
        encode_image(np.zeros((4, 4), np.float32), "png")
    with pytest.raises(ItemError) as caught:
        encode_image(np.zeros((1, 17_000), np.uint8), "webp")
    assert caught.value.reason == Reason.ENCODE_ERROR


def test_mask_round_trip() -> None:
    mask = np.zeros((768, 1024), dtype=bool)
    mask[100:300, 200:500] = True
    mask[::7, ::5] = True
    data = encode_mask(mask)
    assert data == encode_mask(mask.copy())
    assert Image.open(io.BytesIO(data)).mode == "1" and png_chunk_types(data)[-1] == b"IEND"
    assert np.array_equal(decode_mask(data), mask)
    start = time.perf_counter()
    encode_mask(mask)
    assert time.perf_counter() - start < 0.5
    painted = np.dstack([mask * np.uint8(255)] * 3)
    assert np.array_equal(decode_mask(badinputs.encoded(painted, "PNG")), mask * np.uint8(255))
    with pytest.raises(ItemError) as caught:
        decode_mask(b"")
    assert caught.value.reason == Reason.EMPTY_OBJECT
    with pytest.raises(ValueError):
        encode_mask(mask.astype(np.uint8))
