"""X-ray fidelity and privacy: 16-bit stays 16-bit, DICOM decodes by the stated rules, and no
patient data (tags, private tags, EXIF, file and folder names) leaves the source.

DICOM files are generated here with pydicom; canaries are random strings planted where patient
data lives, then searched for in every byte a run leaves behind.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import manifest_text, pipeline_cli
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from pipelines.codec import decode_image
from pipelines.dicom import DicomSpec
from pipelines.errors import ItemError, Reason, RunError
from pipelines.manifest import SourceSpec
from pipelines.pseudonyms import SOURCE_KEY, pseudonym, scrub
from pipelines.sources import list_sources, source_table

KEY_VAR = "SF_TEST_PSEUDONYM_KEY"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def dicom_bytes(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    *,
    bits_stored: int = 16,
    signed: bool = False,
    syntax: str = ExplicitVRLittleEndian,
    **tags: object,
) -> bytes:
    """A DICOM Part 10 file holding ``pixels`` (frames, rows, columns or rows, columns)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = CR_IMAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for name, value in tags.items():
        setattr(ds, name, value)
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    else:  # encapsulated fragments that no installed decoder can read
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64)])
        ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def with_phi(data_tags: dict[str, object], canary: str) -> dict[str, object]:
    """Tags as a hospital would fill them, each holding a distinct canary."""
    return {
        **data_tags,
        "PatientName": f"DOE^JOHN^{canary}NAME",
        "PatientID": f"{canary}ID",
        "PatientBirthDate": "19600101",
        "InstitutionName": f"{canary}INSTITUTION",
        "StudyDescription": f"{canary}STUDY",
    }


def add_private_tag(data: bytes, canary: str) -> bytes:
    """``data`` with a private block whose value is a canary (vendors hide PHI there too)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.private_block(0x0011, "SYNTHFILL TEST", create=True).add_new(0x01, "LO", f"{canary}PRIV")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ramp(width: int, top: int, rows: int = 8) -> np.ndarray:
    """A horizontal ramp 0..top, monotone along x."""
    return np.tile(np.rint(np.linspace(0, top, width)).astype(np.int64), (rows, 1))


def gray(data: bytes, **kwargs: object) -> np.ndarray:
    pixels = decode_image(data, **kwargs)
    assert pixels.ndim == 3 and pixels.shape[2] == 1
    return pixels[..., 0]


def reason_of(data: bytes, **kwargs: object) -> tuple[Reason, str]:
    with pytest.raises(ItemError) as caught:
        decode_image(data, **kwargs)
    return caught.value.reason, caught.value.detail


# --- decoding rules ---------------------------------------------------------------------------


def test_monochrome2_16_bit_is_kept_exactly_and_monochrome1_is_inverted():
    values = ramp(1024, 65535)
    plain = gray(dicom_bytes(values))
    assert plain.dtype == np.uint16 and np.array_equal(plain, values)
    inverted = gray(dicom_bytes(values, "MONOCHROME1"))
    assert np.array_equal(inverted, 65535 - values)
    assert (np.diff(inverted[0].astype(np.int64)) < 0).all()


def test_window_none_maps_the_declared_range_without_clipping():
    values = ramp(4096, 4095)  # 12 bits stored: the declared range 0..4095 spans 0..65535
    out = gray(dicom_bytes(values, bits_stored=12))
    assert out[0, 0] == 0 and out[0, -1] == 65535
    assert len(np.unique(out)) == 4096 and (np.diff(out[0].astype(np.int64)) > 0).all()
    signed = ramp(1000, 2000) - 1000
    out = gray(dicom_bytes(signed, bits_stored=12, signed=True))
    expected = np.rint((signed + 2048) / 4095 * 65535)
    assert np.array_equal(out, expected)


def test_rescale_is_applied_before_the_window():
    values = ramp(4096, 4095)
    tags = {"RescaleSlope": 2, "RescaleIntercept": -1000, "WindowCenter": 1000, "WindowWidth": 2001}
    data = dicom_bytes(values, bits_stored=12, **tags)
    modality = values * 2.0 - 1000
    expected = np.rint(np.clip((modality - 999.5) / 2000 + 0.5, 0, 1) * 65535)
    assert np.array_equal(gray(data, dicom=DicomSpec(window=(1000, 2001))), expected)
    assert np.array_equal(gray(data, dicom=DicomSpec(window="auto")), expected)
    eight = gray(data, dicom=DicomSpec(window="auto", bits=8))
    assert eight.dtype == np.uint8 and np.array_equal(eight, np.rint(expected / 65535 * 255))


def test_auto_window_follows_the_voi_lut_function_and_needs_a_window():
    values = ramp(512, 4095)
    for function, at_center in (("LINEAR_EXACT", 0.5), ("SIGMOID", 0.5)):
        tags = {"WindowCenter": 2048, "WindowWidth": 1024, "VOILUTFunction": function}
        out = gray(dicom_bytes(values, bits_stored=12, **tags), dicom=DicomSpec(window="auto"))
        centre = np.argmin(np.abs(values[0] - 2048))
        assert abs(out[0, centre] / 65535 - at_center) < 0.01, function
    reason, detail = reason_of(dicom_bytes(values), dicom=DicomSpec(window="auto"))
    assert reason == Reason.UNSUPPORTED_FORMAT and "WindowCenter" in detail


def test_dicom_is_recognised_by_its_bytes_and_multi_frame_gives_the_first_frame():
    frames = np.stack([ramp(64, 65535), 65535 - ramp(64, 65535)])
    assert np.array_equal(gray(dicom_bytes(frames)), frames[0])
    headless = dicom_bytes(ramp(64, 65535))[132:]  # no preamble/"DICM": not a Part 10 file
    assert reason_of(headless)[0] == Reason.NOT_AN_IMAGE
    reason, _ = reason_of(dicom_bytes(ramp(64, 100)), formats=frozenset({"PNG"}))
    assert reason == Reason.UNSUPPORTED_FORMAT


def test_compressed_without_a_decoder_and_oversize_are_refused_clearly():
    data = dicom_bytes(ramp(64, 1000), syntax=JPEGLSLossless)
    reason, detail = reason_of(data)
    assert reason == Reason.UNSUPPORTED_FORMAT and "JPEG-LS" in detail and "install" in detail
    reason, _ = reason_of(dicom_bytes(ramp(64, 1000)), max_pixels=100)
    assert reason == Reason.TOO_MANY_PIXELS


def test_burned_in_annotation_is_quarantined_unless_allowed():
    data = dicom_bytes(ramp(64, 1000), BurnedInAnnotation="YES")
    assert reason_of(data)[0] == Reason.BURNED_IN_ANNOTATION
    allowed = DicomSpec(allow_burned_in_annotation=True)
    assert gray(data, dicom=allowed).shape == (8, 64)
    assert gray(dicom_bytes(ramp(64, 1000), BurnedInAnnotation="NO")).shape == (8, 64)


def test_decoding_never_echoes_tag_values(caplog):
    from pydicom.dataelem import DataElement

    canary = "canary" + secrets.token_hex(6)
    # Values invalid for their VR, in tags the decoder reads: pydicom's validator would warn
    # and log quoting them, and a slope that is no number fails with a message quoting it.
    tags = with_phi({}, canary) | {"BurnedInAnnotation": canary, "PatientBirthDate": canary}
    slope = {"RescaleSlope": DataElement(0x00281053, "LO", canary)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the writer's own complaints, not the decoder's
        data = add_private_tag(dicom_bytes(ramp(64, 1000), **tags), canary)
        broken = dicom_bytes(ramp(64, 1000), **tags)
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(broken))
    ds[0x00281053] = slope["RescaleSlope"]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    caplog.clear()
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        assert gray(data).shape == (8, 64)
        reason, detail = reason_of(buffer.getvalue(), name="item")
    assert reason == Reason.DECODE_ERROR and canary not in detail
    assert not [w for w in seen if canary in str(w.message)]
    assert canary not in caplog.text


# --- manifest options ---------------------------------------------------------------------------


def test_manifest_dicom_and_pseudonym_options_validate():
    spec = SourceSpec(uri="x", pseudonymize=True, pseudonym_key="${K}", dicom={"window": [40, 400]})
    assert spec.dicom.window == (40.0, 400.0)
    with pytest.raises(ValueError, match="add it"):  # .dcm is not a default extension
        SourceSpec(uri="x", glob="**/*.dcm")
    # left at their defaults the new options are not dumped: older fingerprints stand
    assert {"dicom", "pseudonymize", "pseudonym_key"} & set(
        SourceSpec(uri="x").model_dump()
    ) == set()
    with pytest.raises(ValueError, match="reference"):
        SourceSpec(uri="x", pseudonymize=True, pseudonym_key="a-literal-secret-key")
    with pytest.raises(ValueError, match="pseudonym_key"):
        SourceSpec(uri="x", pseudonymize=True)
    with pytest.raises(ValueError, match="width"):
        SourceSpec(uri="x", dicom={"window": [40, 0]})
    with pytest.raises(ValueError):
        SourceSpec(uri="x", dicom={"window": "full"})


# --- pseudonyms -------------------------------------------------------------------------------


def test_pseudonyms_are_keyed_stable_and_keep_folders_and_extensions():
    key, other = b"k" * 32, b"j" * 32
    exts = (".dcm", ".png")
    first = pseudonym("DOE_JOHN/19600101_chest.DCM", key, exts)
    assert first == pseudonym("DOE_JOHN/19600101_chest.DCM", key, exts)
    assert first != pseudonym("DOE_JOHN/19600101_chest.DCM", other, exts)
    folder, name = first.split("/")
    assert len(folder) == 32 and name.endswith(".dcm") and "DOE" not in first
    assert pseudonym("DOE_JOHN/lateral.png", key, exts).split("/")[0] == folder
    detail = "[Errno 13] Permission denied: '/data/DOE_JOHN/19600101_chest.DCM' (19600101_chest)"
    scrubbed = scrub(detail, "DOE_JOHN/19600101_chest.DCM", first)
    assert "DOE" not in scrubbed and "19600101" not in scrubbed and first in scrubbed


def test_source_table_carries_pseudonyms_and_the_real_key_apart(tmp_path, monkeypatch):
    folder = tmp_path / "src" / "DOE_JOHN"
    folder.mkdir(parents=True)
    for name in ("19600101_pa.dcm", "19600101_lat.dcm"):
        (folder / name).write_bytes(dicom_bytes(ramp(16, 100)))
    spec = SourceSpec(
        uri=str(tmp_path / "src"),
        extensions=[".dcm"],
        pseudonymize=True,
        pseudonym_key=f"${{{KEY_VAR}}}",
    )
    with pytest.raises(RunError, match=KEY_VAR):
        source_table(spec)
    monkeypatch.setenv(KEY_VAR, "short")
    with pytest.raises(RunError, match="at least"):
        source_table(spec)
    monkeypatch.setenv(KEY_VAR, secrets.token_hex(32))
    items, counts = source_table(spec)
    rows = items.to_pylist()
    assert counts.found == 2 and [r["image_id"] for r in rows] == sorted(
        r["image_id"] for r in rows
    )
    assert {r[SOURCE_KEY] for r in rows} == {
        "DOE_JOHN/19600101_pa.dcm",
        "DOE_JOHN/19600101_lat.dcm",
    }
    for row in rows:
        assert "DOE" not in row["image_id"] + row["uri"] and row["uri"].endswith(row["image_id"])
    assert source_table(spec)[0].equals(items)  # stable: the next night matches these items
    assert [s.source_key for s in list_sources(spec)] == [r[SOURCE_KEY] for r in rows]


def test_quarantine_rows_name_only_the_pseudonym(tmp_path, monkeypatch):
    from pipelines.manifest_loader import load_manifest
    from pipelines.process import ItemProcessor, RunPlan

    folder = tmp_path / "src" / "DOE_JOHN"
    folder.mkdir(parents=True)
    for name in ("19600101_pa.dcm", "19600101_lat.dcm"):
        (folder / name).write_bytes(dicom_bytes(ramp(16, 100)))
    source = (
        f'source: {{uri: "{tmp_path / "src"}", pseudonymize: true, extensions: [.dcm], '
        f"pseudonym_key: '${{{KEY_VAR}}}'}}"
    )
    path = tmp_path / "m.yaml"
    path.write_text(manifest_text(tmp_path / "src", tmp_path / "out", source=source))
    monkeypatch.setenv(KEY_VAR, secrets.token_hex(32))
    loaded = load_manifest(path)
    items = source_table(loaded.manifest.source)[0].to_pylist()
    # Read failures whose messages quote the real path: a folder where a file was listed, and
    # a file gone since the listing.
    (folder / "19600101_pa.dcm").unlink()
    (folder / "19600101_pa.dcm").mkdir()
    (folder / "19600101_lat.dcm").unlink()
    processor = ItemProcessor(RunPlan(loaded.manifest, loaded.fingerprint, "r", "test"))
    rows = processor.process([{**item, "boxes": [], "labels": []} for item in items])
    assert sorted(row["reason"] for row in rows) == ["missing", "read_error"]
    for row in rows:
        text = json.dumps(row, default=str)
        assert "DOE" not in text and "19600101" not in text, text
        assert row["image_id"] in row["error"] and row["source_uri"].endswith(row["image_id"])


# --- whole runs -------------------------------------------------------------------------------


def write_ramp_sources(folder: Path) -> dict[str, np.ndarray]:
    """A 16-bit ramp PNG and ramp DICOMs; returns each file's expected decoded pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    values = ramp(1024, 65535, rows=64)
    Image.fromarray(values.astype(np.uint16)).save(folder / "ramp16.png")  # mode I;16
    (folder / "mono2.dcm").write_bytes(dicom_bytes(values))
    stored = ramp(1024, 4095, rows=64)
    tags = {"RescaleSlope": 1, "RescaleIntercept": -1024}
    (folder / "mono1.dcm").write_bytes(dicom_bytes(stored, "MONOCHROME1", bits_stored=12, **tags))
    inverted = 65535 - np.rint(stored / 4095 * 65535)
    return {"ramp16.png": values, "mono2.dcm": values, "mono1.dcm": inverted}


def read_dataset(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    marker = json.loads((out / "_COMMITTED").read_text())
    index = pd.read_parquet(out / marker["index"])
    quarantine = pd.read_parquet(out / marker["quarantine"])
    return index, quarantine, marker


@pytest.mark.slow
@pytest.mark.matrix("I6")
def test_sixteen_bit_and_monochrome1_stay_faithful_end_to_end(ray_local, tmp_path, matrix):
    from pipelines.manifest_loader import load_manifest
    from pipelines.run import run_manifest

    expected = write_ramp_sources(tmp_path / "src")
    masks = "masks: [{kind: boxes, count: [1, 1], size: [0.1, 0.2]}]"
    path = tmp_path / "m.yaml"
    source = f'source: {{uri: "{tmp_path / "src"}", extensions: [.png, .dcm]}}'
    path.write_text(manifest_text(tmp_path / "src", tmp_path / "out", masks=masks, source=source))
    summary = run_manifest(load_manifest(path))
    assert summary.status == "committed", summary.message
    index, quarantine, _ = read_dataset(tmp_path / "out")
    levels = []
    for row in index.itertuples():
        name = row.output_uri.rsplit("/", 1)[-1]
        out = cv2.imread(row.output_uri.removeprefix("file://"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(row.mask_uri.removeprefix("file://"), cv2.IMREAD_GRAYSCALE) > 0
        assert out.dtype == np.uint16 and row.bit_depth == 16, name
        truth = expected[row.image_id]
        assert np.array_equal(out[~mask], truth[~mask]), name  # outside the fill: the source
        steps = np.diff(np.where(mask, truth, out).astype(np.int64), axis=1)
        assert (steps <= 0).all() if row.image_id == "mono1.dcm" else (steps >= 0).all()
        levels.append(len(np.unique(out[~mask])))
    matrix.record(
        items_in=summary.items_in,
        items_ok=summary.items_ok,
        items_quarantined=summary.items_quarantined,
        distinct_levels=min(levels),
    )
    assert summary.items_ok == 3 and quarantine.empty and min(levels) >= 200


def canary_sources(folder: Path, canary: str) -> int:
    """DICOMs, a JPEG and a PNG carrying canaries in tags, metadata and names; returns how many
    of them must be quarantined."""
    patient = folder / f"DOE_JOHN_{canary}FOLDER"
    patient.mkdir(parents=True)
    values = ramp(256, 65535, rows=48)
    files = {
        f"DOE_JOHN_19600101_{canary}FILE.dcm": dicom_bytes(values, **with_phi({}, canary)),
        f"mono1_{canary}FILE.dcm": dicom_bytes(
            values // 16,
            "MONOCHROME1",
            bits_stored=12,
            **with_phi({"RescaleSlope": 2, "WindowCenter": 2000, "WindowWidth": 3000}, canary),
        ),
        f"burned_{canary}FILE.dcm": dicom_bytes(
            values, **with_phi({"BurnedInAnnotation": "YES"}, canary)
        ),
        f"jpegls_{canary}FILE.dcm": dicom_bytes(
            values, syntax=JPEGLSLossless, **with_phi({}, canary)
        ),
    }
    files[f"cut_{canary}FILE.dcm"] = files[f"DOE_JOHN_19600101_{canary}FILE.dcm"][:-500]
    for name, data in files.items():
        (patient / name).write_bytes(add_private_tag(data, canary))
    photo = Image.fromarray(np.full((48, 64, 3), 120, np.uint8))
    exif = Image.Exif()
    exif[0x013B] = f"{canary}EXIF"  # Artist
    exif[0x010E] = f"{canary}EXIF"  # ImageDescription
    photo.save(patient / f"photo_{canary}FILE.jpg", exif=exif)
    text = PngInfo()
    text.add_text("Comment", f"{canary}PNGTEXT")
    photo.save(patient / f"scan_{canary}FILE.png", pnginfo=text, exif=exif)
    return 3  # burned-in, JPEG-LS without a decoder, cut short


def canary_hits(
    needles: list[bytes], out: Path, ray_dir: Path, texts: list[str]
) -> tuple[list[str], int]:
    """Where any canary shows (raw bytes of every file, Parquet contents, captured output) and
    how many files were searched."""
    hits, searched = [], 0
    for path in [*out.rglob("*"), *ray_dir.rglob("*")]:
        if not path.is_file() or path.is_symlink():
            continue
        searched += 1
        data = path.read_bytes()
        if path.suffix == ".parquet":
            data += pd.read_parquet(path).to_json().encode()
        hits += [f"{path}: {n!r}" for n in needles if n in data or n in path.name.encode()]
    for path in out.rglob("*"):  # keys: every object name under the dataset
        hits += [f"key {path}: {n!r}" for n in needles if n in str(path).encode()]
    for text in texts:
        hits += [f"output: {n!r}" for n in needles if n in text.encode()]
    return hits, searched


@pytest.mark.slow
@pytest.mark.matrix("C7")
def test_phi_canaries_never_leave_the_source(tmp_path, matrix):
    canary = "PHI" + secrets.token_hex(6)
    key = secrets.token_hex(32)
    injected = canary_sources(tmp_path / "src", canary)
    source = (
        f'source: {{uri: "{tmp_path / "src"}", glob: "**/*", pseudonymize: true, '
        f"extensions: [.dcm, .png, .jpg], pseudonym_key: '${{{KEY_VAR}}}', "
        "dicom: {window: none}}"
    )
    compute = "compute: {actors: 2, batch_size: 2, max_error_rate: 1.0}"
    manifest = tmp_path / "phi.yaml"
    manifest.write_text(
        manifest_text(tmp_path / "src", tmp_path / "out", source=source, compute=compute)
    )
    ray_dir = Path(tempfile.mkdtemp(prefix="sf-ray-"))  # Ray's socket paths must fit 107 bytes
    try:
        env = {KEY_VAR: key, "RAY_TMPDIR": str(ray_dir)}
        code, summary, stderr = pipeline_cli(str(manifest), env=env)
        assert code == 0 and summary["status"] == "committed", stderr[-3000:]
        # The next night: the same pseudonyms, so every item is found unchanged.
        _, second, stderr2 = pipeline_cli(str(manifest), env=env)
        assert second.get("status") == "up_to_date", stderr2[-3000:]
        index, quarantine, _ = read_dataset(tmp_path / "out")
        needles = [canary.encode(), key.encode(), b"DOE_JOHN", b"DOE^JOHN", b"19600101"]
        texts = [json.dumps(summary), stderr, json.dumps(second), stderr2]
        hits, searched = canary_hits(needles, tmp_path / "out", ray_dir, texts)
        ray_logs = len(list(ray_dir.rglob("*.log"))) + len(list(ray_dir.rglob("*.err")))
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    matrix.record(
        items_in=summary["items_in"],
        items_ok=summary["items_ok"],
        items_quarantined=summary["items_quarantined"],
        injected=injected,
        canary_hits=len(hits),
        files_searched=searched,
    )
    assert hits == [] and ray_logs > 0  # Ray's worker logs were among the files searched
    assert summary["items_quarantined"] == injected == len(quarantine)
    assert sorted(quarantine["reason"]) == sorted(
        ["burned_in_annotation", "unsupported_format", "decode_error"]
    )
    assert summary["items_ok"] == summary["items_in"] - injected == 4
    assert index["image_id"].str.fullmatch(r"[0-9a-f]{32}/[0-9a-f]{32}\.(dcm|png|jpg)").all()
    assert second["items_unchanged"] == second["items_listed"] == 7 and second["items_in"] == 0
    assert os.environ.get(KEY_VAR) is None  # the key only ever lived in the runs' environment
