"""Reliability matrix rows on bad inputs and hostile configuration (RELIABILITY.md: I, C, D).

Items run through the worker's own code in this process (tests/inprocess.py); the CLI runs as
users run it where an exit code is the figure. Every test reports its row's figures.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import badinputs
import inprocess
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import MINIMAL
from fsspec.core import strip_protocol
from PIL import Image

from pipelines import layout
from pipelines.codec import decode_image
from pipelines.errors import ItemError, ManifestError, Reason
from pipelines.manifest_loader import load_manifest

ROOT = Path(__file__).resolve().parent.parent


def fixture_files(folder: Path, names: list[str]) -> None:
    """Write the named fixtures of tests/badinputs.py into ``folder``."""
    everything = folder.parent / "all_fixtures"
    badinputs.write_bad_inputs(everything)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes((everything / name).read_bytes())


def source_line(folder: Path, extensions: list[str] | None = None) -> str:
    extra = f", extensions: {extensions}" if extensions else ""
    return f'source: {{uri: "{folder}", glob: "*"{extra}}}'


# --- I: bad inputs ----------------------------------------------------------------------------


@pytest.mark.matrix("I1")
def test_zero_byte_objects_are_quarantined_as_empty(tmp_path, tiny_manifest, matrix):
    path = tiny_manifest(count=3)
    for name in ("empty.jpg", "sub_empty.png", "zero.webp"):
        (tmp_path / "images" / name).write_bytes(b"")
    rows = inprocess.process(path)
    figures = inprocess.conservation(rows, items_in=6, variants=2)
    found = inprocess.reasons(rows)
    assert found == {"empty_object": 3}
    assert figures["items_ok"] == 3
    matrix.record(**figures, injected=3, reasons=found)


@pytest.mark.matrix("I2")
def test_non_images_and_disallowed_formats_are_refused_by_their_bytes(
    tmp_path, tiny_manifest, matrix
):
    names = ["text_named.jpg", "image.fits", "animated.gif", "png_named.jpg", "good.jpg"]
    fixture_files(tmp_path / "images", names)
    source = source_line(tmp_path / "images", [".jpg", ".fits", ".gif"])
    rows = inprocess.process(tiny_manifest(count=0, source=source))
    figures = inprocess.conservation(rows, items_in=5, variants=2)
    by_id = {r["image_id"]: r.get("reason") for r in rows}
    assert by_id == {
        "text_named.jpg": "not_an_image",
        "image.fits": "unsupported_format",
        "animated.gif": "unsupported_format",
        "png_named.jpg": None,  # a PNG named .jpg is an allowed format: it decodes
        "good.jpg": None,
    }
    # A format Pillow reads but the caller does not allow is refused, not decoded.
    tiff = badinputs.encoded(badinputs.photo(), "TIFF")
    with pytest.raises(ItemError) as refused:
        decode_image(tiff, formats=frozenset({"JPEG", "PNG"}))
    assert refused.value.reason == Reason.UNSUPPORTED_FORMAT
    found = inprocess.reasons(rows)
    found["unsupported_format"] = found.get("unsupported_format", 0) + 1
    matrix.record(**figures, reasons=found, png_as_jpg_decoded=by_id["png_named.jpg"] is None)


BUDGET_SCRIPT = """
import json, resource, sys, time
from PIL import Image
from pipelines.codec import decode_image
from pipelines.errors import ItemError
huge, tile = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
pillow_limit = Image.MAX_IMAGE_PIXELS
decode_image(tile)  # warm up imports and plugins
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    decode_image(huge, name="aerial_12000.png")
    outcome, reason, detail = "decoded", None, ""
except ItemError as exc:
    outcome, reason, detail = "quarantined", exc.reason.value, exc.detail
seconds = time.perf_counter() - start
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
# The budget is the caller's (source.max_pixels), per call: the same tile both ways.
side = decode_image(tile).shape[0]
try:
    decode_image(tile, max_pixels=side * side - 1)
    tight = None
except ItemError as exc:
    tight = exc.reason.value
print(json.dumps({
    "outcome": outcome, "reason": reason, "detail": detail, "seconds": seconds,
    "rss_kib": grown, "pillow_limit_unchanged": Image.MAX_IMAGE_PIXELS == pillow_limit,
    "tile_over_a_tight_budget": tight,
}))
"""


@pytest.mark.matrix("I5")
def test_a_huge_tile_above_budget_is_quarantined_clearly_without_a_global_switch(tmp_path, matrix):
    from conftest import photo_like

    huge = tmp_path / "aerial_12000.png"
    huge.write_bytes(badinputs.png_bomb(12_000, 12_000))  # 144 MP declared, a few KB stored
    tile = tmp_path / "tile.png"
    tile.write_bytes(badinputs.encoded(photo_like(512, 512, seed=3), "PNG"))
    run = subprocess.run(  # a fresh process: peak RSS measures this decode alone
        [sys.executable, "-c", BUDGET_SCRIPT, str(huge), str(tile)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    figures = json.loads(run.stdout)
    assert figures["outcome"] == "quarantined" and figures["reason"] == "too_many_pixels"
    assert "aerial_12000.png" in figures["detail"] and "12000x12000" in figures["detail"]
    assert "limit 100000000" in figures["detail"]  # says which budget it is over
    assert figures["seconds"] < 1.0 and figures["rss_kib"] < 100 * 1024
    assert figures["pillow_limit_unchanged"]  # never a process-wide disable
    assert figures["tile_over_a_tight_budget"] == "too_many_pixels"
    matrix.record(
        outcome=figures["outcome"],
        reason=figures["reason"],
        seconds=round(figures["seconds"], 4),
        peak_rss_delta_mb=round(figures["rss_kib"] / 1024, 1),
        pillow_limit_unchanged=figures["pillow_limit_unchanged"],
        tiled_path=False,
    )


@pytest.mark.matrix("I7")
def test_exif_orientation_masks_align_with_upright_pixels_and_outputs_carry_no_exif(
    tmp_path, tiny_manifest, matrix
):
    folder = tmp_path / "images"
    folder.mkdir()
    for orientation, data in badinputs.exif_oriented_jpegs().items():
        (folder / f"orientation_{orientation}.jpg").write_bytes(data)
    upright = decode_image(badinputs.exif_oriented_jpegs()[1])
    rows = inprocess.process(tiny_manifest(count=0), "output.format=png")
    figures = inprocess.conservation(rows, items_in=8, variants=2)
    assert figures["items_ok"] == 8
    misaligned = exif_outputs = 0
    for row in rows:
        data = Path(strip_protocol(row["output_uri"])).read_bytes()
        mask = np.asarray(Image.open(strip_protocol(row["mask_uri"]))).astype(bool)
        out = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        # Outside its mask an output is the upright source, pixel for pixel.
        if out.shape != upright.shape or not np.array_equal(out[~mask], upright[~mask]):
            misaligned += 1
        if b"Exif" in data or Image.open(io.BytesIO(data)).getexif():
            exif_outputs += 1
    assert misaligned == 0 and exif_outputs == 0
    matrix.record(**figures, misaligned=misaligned, exif_tags_in_outputs=exif_outputs)


@pytest.mark.matrix("I8")
def test_awkward_pixel_modes_give_the_same_outputs_every_run(tmp_path, tiny_manifest, matrix):
    names = ["cmyk.jpg", "palette_transparent.png", "rgba.png", "gray_alpha.png", "bilevel.png"]
    fixture_files(tmp_path / "images", names)
    path = tiny_manifest(count=0)
    first = inprocess.process(path, "output.format=png")
    figures = inprocess.conservation(first, items_in=5, variants=2)
    second = inprocess.process(
        path, "output.format=png"
    )  # a fresh worker, as another run would have
    key = lambda r: (r["image_id"], r["variant"])  # noqa: E731
    digests = [{key(r): r["output_sha256"] for r in rows} for rows in (first, second)]
    unstable = sum(digests[0][k] != digests[1].get(k) for k in digests[0])
    modes = {r["image_id"]: Image.open(strip_protocol(r["output_uri"])).mode for r in first}
    # Colour (CMYK, palette, RGBA) becomes RGB; gray with alpha and 1-bit stay gray (DESIGN.md).
    assert modes == {
        "cmyk.jpg": "RGB",
        "palette_transparent.png": "RGB",
        "rgba.png": "RGB",
        "gray_alpha.png": "L",
        "bilevel.png": "L",
    }
    assert unstable == 0 and len(digests[0]) == 10
    matrix.record(**figures, output_modes=modes, sha256_unstable=unstable)


FUZZ_SCRIPT = """
import json, sys, time, warnings
from pathlib import Path
from pipelines.codec import decode_image
from pipelines.errors import ItemError
warnings.simplefilter("ignore")
files = sorted(Path(sys.argv[1]).iterdir())
counts, uncaught = {"decoded": 0}, []
start = time.perf_counter()
for path in files:
    try:
        decode_image(path.read_bytes(), max_pixels=1_000_000, name=path.name)
        counts["decoded"] += 1
    except ItemError as exc:
        counts[exc.reason.value] = counts.get(exc.reason.value, 0) + 1
    except BaseException as exc:
        uncaught.append(f"{path.name}: {type(exc).__name__}: {exc}")
seconds = time.perf_counter() - start
print(json.dumps({"inputs": len(files), "seconds": seconds, "counts": counts,
                  "uncaught": uncaught}))
"""


def fuzz_seeds() -> list[bytes]:
    """Valid files of every allowed container (and the known TypeError TIFF) to mutate."""
    small = badinputs.photo(32, 24)
    return [
        badinputs.malformed_tiff(),
        badinputs.encoded(small, "TIFF"),
        badinputs.encoded(small, "TIFF", compression="tiff_lzw"),
        badinputs.encoded(small, "JPEG", quality=80),
        badinputs.encoded(small, "JPEG", progressive=True),
        badinputs.exif_oriented_jpegs()[6],
        badinputs.encoded(small, "PNG"),
        badinputs.palette_with_transparency(),
        badinputs.encoded(badinputs.gray16_ramp()[:32, :32], "PNG"),
        badinputs.encoded(small, "WEBP", quality=80),
        badinputs.encoded(small, "BMP"),
        badinputs.png_bomb(2_000, 2_000),
    ]


def mutate(seed: bytes, other: bytes, rng: np.random.Generator) -> bytes:
    """One deterministic mutation: flips, extreme integers, cuts, inserts, repeats or splices."""
    data = bytearray(seed)
    head = min(len(data), 512)  # headers are where parsers decide sizes and offsets
    kind = int(rng.integers(0, 6))
    if kind == 0:
        for where in rng.integers(0, head, size=int(rng.integers(1, 9))):
            data[where] = int(rng.integers(0, 256))
    elif kind == 1:
        where = int(rng.integers(0, max(head - 4, 1)))
        data[where : where + 4] = [b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", bytes(4)][
            int(rng.integers(0, 3))
        ]
    elif kind == 2:
        data = data[: int(rng.integers(0, len(data)))]
    elif kind == 3:
        where = int(rng.integers(0, len(data)))
        data[where:where] = (
            rng.integers(0, 256, int(rng.integers(1, 64))).astype(np.uint8).tobytes()
        )
    elif kind == 4:
        start = int(rng.integers(0, len(data)))
        piece = data[start : start + int(rng.integers(1, 256))]
        data[start:start] = piece * int(rng.integers(1, 8))
    else:
        cut = int(rng.integers(1, min(len(data), len(other))))
        data = data[:cut] + bytearray(other[cut:])
    return bytes(data)


@pytest.mark.matrix("I9")
def test_a_generated_corpus_of_malformed_files_never_escapes_the_decoder(tmp_path, matrix):
    seeds = fuzz_seeds()
    rng = np.random.default_rng(20260101)
    corpus = tmp_path / "fuzz"
    corpus.mkdir()
    per_seed = 1000
    for s, seed in enumerate(seeds):
        (corpus / f"s{s:02d}-seed").write_bytes(seed)
        for i in range(per_seed):
            other = seeds[int(rng.integers(0, len(seeds)))]
            (corpus / f"s{s:02d}-{i:04d}").write_bytes(mutate(seed, other, rng))
    # Replayed in a child process: a decoder that crashed the process would show as its exit.
    run = subprocess.run(
        [sys.executable, "-c", FUZZ_SCRIPT, str(corpus)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.loads(run.stdout)
    assert figures["inputs"] == len(seeds) * (per_seed + 1)
    assert figures["uncaught"] == [], figures["uncaught"][:5]
    assert figures["counts"]["decode_error"] > 0 and figures["counts"]["decoded"] > 0
    matrix.record(
        inputs=figures["inputs"],
        uncaught_exceptions=len(figures["uncaught"]),
        execs_per_s=round(figures["inputs"] / figures["seconds"], 1),
        outcomes=figures["counts"],
        worker_died=False,
    )


# --- C: hostile configuration ----------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.matrix("C1")
def test_python_tags_in_a_manifest_are_refused_and_never_run(tmp_path, matrix):
    marker = tmp_path / "owned"
    payloads = {
        "object/apply": f'!!python/object/apply:os.system ["touch {marker}"]',
        "object/new": f'!!python/object/new:subprocess.check_call [["touch", "{marker}"]]',
        "name": "!!python/name:os.system",
        "module": "!!python/module:os",
    }
    # Control: the payload is live, so its absence below proves the loader refused it.
    yaml.unsafe_load(f"x: {payloads['object/apply']}")
    assert marker.exists()
    marker.unlink()
    for label, payload in payloads.items():
        path = _write(tmp_path, f"{label.replace('/', '_')}.yaml", MINIMAL.replace("tiny", payload))
        with pytest.raises(ManifestError, match="python/" + label.split("/")[0]):
            load_manifest(path)
    # As users meet it, in a file and in a --set value: `pipeline validate` exits 2 naming it.
    exit_codes = {}
    for where, args in {
        "file": [str(tmp_path / "object_apply.yaml")],
        "--set": [
            str(_write(tmp_path, "ok.yaml", MINIMAL)),
            "--set",
            f"seed={payloads['object/apply']}",
        ],
    }.items():
        result = cli("validate", *args)
        exit_codes[where] = result.returncode
        assert result.returncode == 2, result.stderr
        assert "python/object/apply" in result.stderr
    assert not marker.exists()
    matrix.record(payloads=len(payloads), side_effects=int(marker.exists()), exit_codes=exit_codes)


def alias_bomb_manifest() -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return MINIMAL + "\n".join("extra_" + line for line in lines) + "\n"


@pytest.mark.matrix("C2")
def test_yaml_traps_are_refused_at_load_fast_naming_the_problem(tmp_path, matrix):
    load_manifest(_write(tmp_path, "warm.yaml", MINIMAL))  # imports and schema built once
    cases = {
        "alias_bomb": (alias_bomb_manifest(), "expands to more than"),
        "oversize": (MINIMAL + "#" + "x" * 1_100_000 + "\n", "larger than"),
        "duplicate_key": (MINIMAL + "seed: 4\n", "duplicate key 'seed'"),
        "octal_seed": (MINIMAL.replace("seed: 3", "seed: 012345"), "seed"),
        "hex_variants": (MINIMAL.replace("variants: 2", "variants: 0x10"), "variants"),
        "norway_name": (MINIMAL.replace("name: tiny", "name: [NO, yes]"), "name"),
    }
    figures = {}
    for label, (text, named) in cases.items():
        path = _write(tmp_path, f"{label}.yaml", text)
        start = time.perf_counter()
        with pytest.raises(ManifestError) as refused:
            load_manifest(path)
        ms = (time.perf_counter() - start) * 1000
        message = str(refused.value)
        assert named in message, (label, message)
        assert ms < 100, (label, ms)
        first_line = message.splitlines()[0].replace(str(tmp_path) + "/", "")
        figures[label] = {"load_ms": round(ms, 2), "message": first_line[:160]}
    assert len(alias_bomb_manifest()) < 1000
    matrix.record(cases=figures, max_load_ms=max(f["load_ms"] for f in figures.values()))


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


HOSTILE_IDS = [
    "../escaped.png",
    "a/../../escaped.png",
    "./img_000.png",
    "a//b.png",
    "/abs.png",
    "nul\x00byte.png",
]


@pytest.mark.matrix("C3")
def test_traversal_in_item_ids_writes_nothing_outside_the_dataset(tmp_path, matrix):
    from conftest import photo_like, write_images

    source, out = tmp_path / "store" / "images", tmp_path / "store" / "dataset"
    write_images(source, 2)
    # What a traversal would reach (read or overwrite) just outside the source and dataset.
    Image.fromarray(photo_like(96, 128, seed=9)).save(tmp_path / "store" / "escaped.png")
    # Inventories carry keys as data: nothing stops one holding "..", "//" or a NUL byte.
    keys = [f"{source}/{name}" for name in ["img_000.png", "img_001.png", *HOSTILE_IDS]]
    inventory = tmp_path / "inventory.parquet"
    pq.write_table(pa.table({"key": keys, "size": [0] * len(keys)}), inventory)
    text = MINIMAL.replace("{uri: out}", f'{{uri: "{out}"}}').replace(
        '{uri: images, glob: "*.png"}', f'{{uri: "{source}", inventory: "{inventory}"}}'
    )
    manifest = _write(tmp_path, "m.yaml", text)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    rows = inprocess.process(manifest)
    figures = inprocess.conservation(rows, items_in=2 + len(HOSTILE_IDS), variants=2)
    refused = {r["image_id"] for r in rows if r["status"] == "quarantined"}
    assert refused == set(HOSTILE_IDS) and figures["items_ok"] == 2
    assert inprocess.reasons(rows) == {"bad_image_id": len(HOSTILE_IDS)}
    outside = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and before.get(p) != p.stat().st_mtime_ns and out not in p.parents
    ]
    assert outside == []
    for image_id in HOSTILE_IDS:  # the key builders refuse them too, whoever calls them
        with pytest.raises(ValueError):
            layout.output_key(image_id, 0, "png", "tag")
    matrix.record(
        **figures,
        hostile_ids_listed=len(refused),
        reasons=inprocess.reasons(rows),
        objects_outside_prefix=len(outside),
        rejected_at="read (quarantine bad_image_id)",
    )


@pytest.mark.matrix("C4")
def test_template_syntax_in_manifest_values_is_refused_or_kept_literal(tmp_path, matrix):
    attack = "{image_id.__class__.__init__.__globals__}"
    refusals = {}
    for label, text in {
        "name": MINIMAL.replace("name: tiny", f'name: "{attack}"'),
        "mask_suffix": MINIMAL.replace(
            "kind: boxes, count: [1, 2]", f'kind: from_files, uri: masks, suffix: "/{attack}"'
        ),
    }.items():
        with pytest.raises(ManifestError) as refused:
            load_manifest(_write(tmp_path, f"{label}.yaml", text))
        refusals[label] = str(refused.value).splitlines()[0][:160]
    with pytest.raises(ManifestError) as refused:
        load_manifest(_write(tmp_path, "ok.yaml", MINIMAL), [f"compute.{attack}=1"])
    refusals["override_key"] = str(refused.value).splitlines()[0][:160]
    # Where braces are legal characters they stay characters: no value is ever formatted.
    text = MINIMAL.replace(
        "kind: boxes, count: [1, 2]", f'kind: from_files, uri: masks, suffix: "_{attack}.png"'
    )
    loaded = load_manifest(_write(tmp_path, "literal.yaml", text))
    assert loaded.manifest.masks[0].mask_key("a/b.jpg") == f"a/b_{attack}.png"
    assert "name" in refusals["name"] and "suffix" in refusals["mask_suffix"]
    assert refusals["override_key"].startswith("compute.{image_id: unknown field")
    matrix.record(rejections=refusals, evaluated_templates=0)


# --- D: determinism ---------------------------------------------------------------------------


@pytest.mark.matrix("D3")
def test_the_seed_reaches_every_output(tmp_path, tiny_manifest, matrix):
    augment = "augment: [{HorizontalFlip: {p: 0.5}}, {RandomBrightnessContrast: {p: 0.5}}]"
    path = tiny_manifest(count=6, augment=augment)
    runs = {
        "seed11": inprocess.process(path),
        "seed11_again": inprocess.process(path),
        "seed12": inprocess.process(path, "seed=12"),
    }
    figures = inprocess.conservation(runs["seed11"], items_in=6, variants=2)
    digests = {
        name: {(r["image_id"], r["variant"]): r["output_sha256"] for r in rows}
        for name, rows in runs.items()
    }
    keys = sorted(digests["seed11"])
    changed = sum(digests["seed11"][k] != digests["seed12"][k] for k in keys) / len(keys)
    same = sum(digests["seed11"][k] == digests["seed11_again"][k] for k in keys) / len(keys)
    masks = [{(r["image_id"], r["variant"]): r["mask_sha256"] for r in runs[n]} for n in runs]
    masks_changed = sum(masks[0][k] != masks[2][k] for k in keys) / len(keys)
    assert len(keys) == 12 and changed == 1.0 and same == 1.0 and masks_changed == 1.0
    matrix.record(
        **figures,
        fraction_changed=changed,
        fraction_identical_same_seed=same,
        fraction_masks_changed=masks_changed,
    )
