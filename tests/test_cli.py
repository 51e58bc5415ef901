"""The `pipeline` command as a user runs it: exit codes, messages, JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pipeline(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_help_teaches_the_commands():
    result = pipeline("--help")
    assert result.returncode == 0
    for command in ("run", "validate", "plan", "schema", "samples"):
        assert command in result.stdout


@pytest.mark.parametrize("name", ["retail_shelf", "aerial_clouds", "cxr_damage"])
def test_validate_shipped(name):
    result = pipeline("validate", f"manifests/{name}.yaml")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_validate_misspelt_key_exits_2_naming_the_field(tmp_path):
    text = (ROOT / "manifests/retail_shelf.yaml").read_text().replace("dilate_px", "dilate_pix")
    (tmp_path / "m.yaml").write_text(text)
    result = pipeline("validate", str(tmp_path / "m.yaml"))
    assert result.returncode == 2
    assert "masks.0.product_slots.dilate_pix" in result.stderr
    assert "dilate_px" in result.stderr  # the hint


def test_validate_unknown_kind_exits_2(tmp_path):
    text = (
        (ROOT / "manifests/aerial_clouds.yaml")
        .read_text()
        .replace("kind: navier_stokes", "kind: lama2")
    )
    (tmp_path / "m.yaml").write_text(text)
    result = pipeline("validate", str(tmp_path / "m.yaml"))
    assert result.returncode == 2
    assert "inpainter" in result.stderr and "lama2" in result.stderr


def test_schema_is_json_schema():
    result = pipeline("schema")
    schema = json.loads(result.stdout)
    assert schema["title"] == "synthfill manifest"
    assert {"name", "seed", "source", "masks", "inpainter", "output"} <= set(schema["properties"])


def test_plan_counts_without_computing(tmp_path):
    result = pipeline(
        "plan", "manifests/retail_shelf.yaml", "--set", f"output.uri={tmp_path / 'o'}"
    )
    assert result.returncode == 0, result.stderr
    assert "rows to write" in result.stdout and "32" in result.stdout  # 8 shelves x 4 variants
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_run_json_and_an_up_to_date_second_run(tmp_path, tiny_manifest):
    path = tiny_manifest(count=3)
    result = pipeline("run", str(path), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "committed"
    assert summary["items_in"] == 3 == summary["items_ok"] + summary["items_quarantined"]
    assert summary["rows_written"] == 6
    again = pipeline("run", str(path), "--json")
    assert again.returncode == 0, again.stderr  # nothing new: a nightly job's normal night
    assert json.loads(again.stdout)["status"] == "up_to_date"
    assert "up to date" in again.stderr


def test_run_with_bad_override_exits_2(tmp_path):
    result = pipeline("run", "manifests/retail_shelf.yaml", "--set", "compute.actors=zero")
    assert result.returncode == 2
    assert "compute.actors" in result.stderr


def test_limit_must_be_positive():
    result = pipeline("plan", "manifests/retail_shelf.yaml", "--limit", "0")
    assert result.returncode == 2


@pytest.mark.slow
def test_run_over_error_rate_exits_1_with_json(tmp_path, tiny_manifest):
    path = tiny_manifest(count=2)
    (tmp_path / "images" / "zero.png").write_bytes(b"")
    result = pipeline("run", str(path), "--json")
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["status"] == "failed" and summary["quarantine_reasons"] == {"empty_object": 1}
    assert "max_error_rate" in result.stderr
    assert not (tmp_path / "out" / "_COMMITTED").exists()


def test_samples_writes_the_shelves_and_refuses_unknown_folders(tmp_path):
    result = pipeline("samples", str(tmp_path), "--only", "shelves")
    assert result.returncode == 0, result.stderr
    assert "shelves: 10 files" in result.stdout
    assert (tmp_path / "shelves" / "boxes.csv").read_bytes() == (
        ROOT / "samples/shelves/boxes.csv"
    ).read_bytes()
    bad = pipeline("samples", str(tmp_path), "--only", "moon")
    assert bad.returncode == 2 and "shelves" in bad.stderr
