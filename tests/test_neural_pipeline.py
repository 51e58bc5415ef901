"""Neural inpainters through the whole pipeline on a local Ray: side by side, pinned, reproducible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from tiny_models import build_smooth_lama, write_maskaware_checkpoint

from inpaint_ops.weights import sha256_file
from pipelines.errors import RunError
from pipelines.manifest_loader import load_manifest
from pipelines.run import run_manifest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def read_index(out: Path) -> pd.DataFrame:
    marker = json.loads((out / "_COMMITTED").read_text())
    return pd.read_parquet(out / marker["index"])


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    return {
        "maskaware": write_maskaware_checkpoint(tmp_path / "models" / "ma.safetensors"),
        "lama": build_smooth_lama(tmp_path / "models" / "lama.pt"),
    }


def _side_by_side(models: dict[str, Path]) -> str:
    lama_sha = sha256_file(models["lama"])
    return (
        "inpainter:\n"
        "  - {kind: telea, radius: 3}\n"
        f"  - {{kind: maskaware, weights: {models['maskaware']}, resolution: 64}}\n"
        f"  - {{kind: lama, name: smooth, weights: {models['lama']}, weights_sha256: {lama_sha}, resolution: 64}}\n"
    )


def test_inpainters_side_by_side_share_masks_and_seeds(ray_local, tmp_path, tiny_manifest, models):
    path = tiny_manifest(count=3, inpainter=_side_by_side(models))
    summary = run_manifest(load_manifest(path))
    assert summary.status == "committed", summary.message
    assert (summary.items_in, summary.items_ok, summary.rows_written) == (3, 3, 18)
    index = read_index(tmp_path / "out")
    assert sorted(index["inpainter"].unique()) == ["maskaware", "smooth", "telea"]
    for _, group in index.groupby(["image_id", "variant"]):
        assert len(group) == 3
        assert group["seed"].nunique() == 1 and group["mask_sha256"].nunique() == 1
        assert group["output_uri"].nunique() == 3
    weights = index.set_index("inpainter")["weights_sha256"].groupby(level=0).first()
    assert weights["maskaware"] == sha256_file(models["maskaware"])
    assert weights["smooth"] == sha256_file(models["lama"])
    assert index.loc[index["inpainter"] == "telea", "weights_sha256"].isna().all()
    assert (index["inpaint_device"] == "cpu").all() and not index["fill_blank"].any()
    params = json.loads(index.loc[index["inpainter"] == "smooth", "inpainter_params"].iloc[0])
    assert params["kind"] == "lama" and "storage_options" not in params
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["weights"]["smooth"]["sha256"] == sha256_file(models["lama"])


def test_neural_outputs_do_not_depend_on_batching(ray_local, tmp_path, tiny_manifest, models):
    inpainter = (
        f"inpainter: {{kind: maskaware, weights: {models['maskaware']}, resolution: 64, "
        "batch_size: 4}"
    )
    path = tiny_manifest(count=4, inpainter=inpainter)
    a, b = tmp_path / "a", tmp_path / "b"
    run_manifest(
        load_manifest(path, [f"output.uri={a}", "compute.actors=1", "compute.batch_size=1"])
    )
    run_manifest(
        load_manifest(path, [f"output.uri={b}", "compute.actors=2", "compute.batch_size=3"])
    )
    key = ["image_id", "variant"]
    ia, ib = (read_index(p).set_index(key).sort_index() for p in (a, b))
    assert ia["output_sha256"].equals(ib["output_sha256"])


def test_weights_pin_mismatch_fails_before_compute(ray_local, tmp_path, tiny_manifest, models):
    wrong = "0" * 64
    inpainter = (
        f"inpainter: {{kind: maskaware, weights: {models['maskaware']}, weights_sha256: {wrong}}}"
    )
    path = tiny_manifest(count=2, inpainter=inpainter)
    with pytest.raises(RunError, match="sha256") as caught:
        run_manifest(load_manifest(path))
    assert sha256_file(models["maskaware"]) in str(caught.value)
    assert not (tmp_path / "out").exists()  # nothing was staged or written


def test_unpinned_torchscript_is_refused_with_the_hash_to_pin(tmp_path, tiny_manifest, models):
    path = tiny_manifest(count=1, inpainter=f"inpainter: {{kind: lama, weights: {models['lama']}}}")
    done = subprocess.run(
        [sys.executable, "-m", "cli", "run", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "weights_sha256" in done.stderr and sha256_file(models["lama"]) in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["retail_shelf", "aerial_clouds", "cxr_damage"])
def test_demo_manifests_switch_to_the_shipped_maskaware_checkpoints(ray_local, tmp_path, name):
    checkpoint = ROOT / "checkpoints" / f"{name}.safetensors"
    card = json.loads(checkpoint.with_suffix(".card.json").read_text())
    assert card["weights_sha256"] == sha256_file(checkpoint)
    inpainter = f"inpainter={{kind: maskaware, weights: {checkpoint}, weights_sha256: {card['weights_sha256']}}}"
    out = tmp_path / name
    loaded = load_manifest(
        ROOT / "manifests" / f"{name}.yaml", [inpainter, f"output.uri={out}", "variants=1"]
    )
    summary = run_manifest(loaded, limit=1)
    assert summary.status == "committed", summary.message
    index = read_index(out)
    assert (index["inpainter"] == "maskaware").all()
    assert (index["weights_sha256"] == card["weights_sha256"]).all()
