from pathlib import Path

import pytest
from conftest import MINIMAL

from pipelines.errors import ManifestError
from pipelines.manifest_loader import apply_override, load_manifest, manifest_json_schema

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted((ROOT / "manifests").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_manifest_validates(path):
    loaded = load_manifest(path)
    assert len(loaded.fingerprint) == 64
    assert Path(loaded.manifest.source.uri).is_absolute()


def test_three_demo_manifests_ship():
    assert {p.stem for p in SHIPPED} >= {"retail_shelf", "aerial_clouds", "cxr_damage"}


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path):
    loaded = load_manifest(write(tmp_path, MINIMAL))
    assert loaded.manifest.source.uri == str(tmp_path / "images")
    assert loaded.manifest.output.uri == str(tmp_path / "out")


def test_urls_are_left_alone(tmp_path):
    loaded = load_manifest(write(tmp_path, MINIMAL), ["source.uri=s3://bucket/shelves"])
    assert loaded.manifest.source.uri == "s3://bucket/shelves"


def test_misspelt_key_names_the_field_and_suggests(tmp_path):
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, MINIMAL.replace("variants: 2", "variantz: 2")))
    assert info.value.path == "variantz"
    assert "variants" in info.value.hint


def test_misspelt_nested_key_names_the_path(tmp_path):
    text = MINIMAL.replace("radius: 3", "raduis: 3")
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, text))
    assert info.value.path == "inpainter.telea.raduis"
    assert "radius" in info.value.hint


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, MINIMAL.replace("kind: boxes", "kind: blobs")))
    assert info.value.path.startswith("masks.0")
    assert "blobs" in info.value.message


def test_octal_looking_seed_is_not_silently_reinterpreted(tmp_path):
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, MINIMAL.replace("seed: 3", "seed: 012345")))
    assert info.value.path == "seed"


def test_unknown_augmentation_is_refused(tmp_path):
    text = MINIMAL + "augment: [{HorizontalFlipp: {p: 0.5}}]\n"
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, text))
    assert info.value.path.startswith("augment")
    assert "HorizontalFlipp" in info.value.message


def test_split_fractions_must_sum_to_one(tmp_path):
    with pytest.raises(ManifestError, match="sum to 1"):
        load_manifest(write(tmp_path, MINIMAL + "split: {train: 0.9, val: 0.2, test: 0}\n"))


def test_overrides_parse_yaml_values_and_index_lists():
    data = {"compute": {"actors": 2}, "masks": [{"kind": "boxes"}]}
    apply_override(data, "compute.actors=4")
    apply_override(data, "masks.0.count=[1, 3]")
    apply_override(data, "output.format=png")
    assert data == {
        "compute": {"actors": 4},
        "masks": [{"kind": "boxes", "count": [1, 3]}],
        "output": {"format": "png"},
    }


@pytest.mark.parametrize("bad", ["compute.actors", "=3", "masks.5.count=1"])
def test_bad_overrides_are_refused(bad):
    with pytest.raises(ManifestError):
        apply_override({"masks": [{}]}, bad)


def test_fingerprint_ignores_where_and_how_but_not_what(tmp_path):
    path = write(tmp_path, MINIMAL)
    base = load_manifest(path).fingerprint
    assert load_manifest(path, ["compute.actors=7", "output.uri=s3://b/o"]).fingerprint == base
    assert load_manifest(path, ["seed=4"]).fingerprint != base
    assert load_manifest(path, ["inpainter.radius=4"]).fingerprint != base


def test_schema_lists_every_kind():
    text = str(manifest_json_schema())
    for kind in (
        "product_slots",
        "cloud_regions",
        "damage",
        "boxes",
        "from_files",
        "telea",
        "navier_stokes",
    ):
        assert kind in text


def test_fingerprint_can_be_recomputed_from_the_recorded_resolved_manifest(tmp_path):
    text = MINIMAL.replace("[{kind: boxes, count: [1, 2]}]", "[{kind: from_files, uri: masks}]")
    loaded = load_manifest(write(tmp_path, text))
    assert loaded.manifest.masks[0].uri == str(tmp_path / "masks")
    assert loaded.manifest.fingerprint() == loaded.fingerprint


@pytest.mark.parametrize(
    "override, path",
    [("split.group_pattern=(a", "split"), ("source.uri=foo://x", "source.uri")],
)
def test_bad_values_are_manifest_errors_not_crashes(tmp_path, override, path):
    with pytest.raises(ManifestError) as info:
        load_manifest(write(tmp_path, MINIMAL), [override])
    assert info.value.path == path


def test_non_utf8_manifest_is_a_manifest_error(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_bytes(MINIMAL.encode() + b"# \xff\xfe\n")
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(path)
