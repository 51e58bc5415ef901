"""`pipeline train` and the maskaware model: learning, checkpoints, model cards, resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from inpaint_ops.inpainters import MaskAware
from inpaint_ops.inpainters.maskaware_net import MaskAwareConfig, MaskAwareNet
from inpaint_ops.inpainters.maskaware_train import MaskAwareTrainer, TrainBatch
from inpaint_ops.weights import WeightsError, sha256_file
from pipelines.errors import RunError
from pipelines.manifest_loader import load_manifest
from pipelines.train import train_model
from pipelines.train_spec import ModelShape, TrainSpec

ROOT = Path(__file__).resolve().parent.parent
TINY = ModelShape(channels=8, dim=32, depth=2, heads=2, style_dim=16, refine_blocks=1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _spec(tmp_path: Path, **changes: object) -> TrainSpec:
    base = {
        "output": str(tmp_path / "ck" / "model.safetensors"),
        "resolution": 64,
        "batch_size": 2,
        "steps": 3,
        "model": TINY,
        "checkpoint_minutes": 60,
    }
    return TrainSpec(**{**base, **changes})


def test_masked_attention_ignores_hole_pixels_and_grows_validity() -> None:
    torch.manual_seed(0)
    net = MaskAwareNet(MaskAwareConfig(channels=8, dim=32, depth=2, heads=2, style_dim=16)).eval()
    image = torch.rand(1, 3, 64, 64)
    valid = torch.ones(1, 1, 64, 64)
    valid[:, :, 16:48, 16:48] = 0
    other = image.clone()
    other[:, :, 16:48, 16:48] = torch.rand(1, 3, 32, 32)  # different pixels inside the hole
    z, noise = torch.zeros(1, 16), torch.zeros(1, 1, 64, 64)
    with torch.no_grad():
        a = net(image, valid, z, noise)["fill"]
        b = net(other, valid, z, noise)["fill"]
    assert torch.equal(a, b)  # what was in the hole cannot reach the fill
    block = net.blocks[0]
    tokens, token_valid = torch.rand(1, 8, 8, 32), torch.zeros(1, 8, 8, dtype=torch.bool)
    token_valid[0, 0, 0] = True
    _, grown = block(tokens, token_valid)
    assert grown[0, :8, :8].all()  # the one valid token's whole window became valid


def test_model_learns_loss_falls_in_a_few_steps() -> None:
    torch.manual_seed(0)
    trainer = MaskAwareTrainer(
        MaskAwareConfig(channels=8, dim=32, depth=2, heads=2, style_dim=16),
        lr=3e-3,
        adversarial=0.0,
        device=torch.device("cpu"),
        amp=None,
    )
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    image = torch.stack([x, y, (x + y) / 2])[None].repeat(4, 1, 1, 1)
    valid = torch.ones(4, 1, 64, 64)
    valid[:, :, 20:44, 20:44] = 0
    batch = TrainBatch(image, valid, torch.zeros(4, 16), torch.zeros(4, 1, 64, 64))
    losses = [trainer.step(batch)["hole_l1"] for _ in range(25)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_train_writes_checkpoint_and_card_and_resumes(tmp_path: Path) -> None:
    loaded = load_manifest(ROOT / "manifests" / "retail_shelf.yaml")
    first = train_model(loaded, _spec(tmp_path, steps=3))
    assert (first.resumed_from, first.steps_done, first.stopped) == (0, 3, "steps")
    weights = Path(first.output)
    card = json.loads(weights.with_suffix(".card.json").read_text())
    assert card["weights_sha256"] == sha256_file(weights) == first.card["weights_sha256"]
    assert card["steps"] == 3 and card["data"]["images"] == 7  # shelf_006 is held out (val)
    assert card["data"]["held_out_images"] == 1 and card["held_out_hole_l1"] > 0
    assert card["masks"][0]["kind"] == "product_slots" and card["code_version"]
    assert len(card["data"]["fingerprint"]) == 64
    assert all(t.dtype == torch.float16 for t in load_file(weights).values())

    second = train_model(loaded, _spec(tmp_path, steps=5))
    assert (second.resumed_from, second.steps_done, second.card["steps"]) == (3, 2, 5)
    fresh = train_model(loaded, _spec(tmp_path, steps=2), fresh=True)
    assert (fresh.resumed_from, fresh.card["steps"]) == (0, 2)


def test_resumed_training_computes_the_same_steps(tmp_path: Path) -> None:
    loaded = load_manifest(ROOT / "manifests" / "aerial_clouds.yaml")
    straight = train_model(loaded, _spec(tmp_path / "a", steps=4, weights_dtype="float32"))
    train_model(loaded, _spec(tmp_path / "b", steps=2, weights_dtype="float32"))
    resumed = train_model(loaded, _spec(tmp_path / "b", steps=4, weights_dtype="float32"))
    a, b = load_file(straight.output), load_file(resumed.output)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_changed_recipe_is_not_resumed_silently(tmp_path: Path) -> None:
    loaded = load_manifest(ROOT / "manifests" / "aerial_clouds.yaml")
    train_model(loaded, _spec(tmp_path, steps=1))
    with pytest.raises(RunError, match="different training recipe.*--fresh"):
        train_model(loaded, _spec(tmp_path, steps=2, lr=1e-3))


def test_interrupted_training_saves_a_checkpoint(tmp_path: Path) -> None:
    loaded = load_manifest(ROOT / "manifests" / "cxr_damage.yaml")

    def stop_at_two(done: int, total: int, loss: float) -> None:
        if done == 2:
            raise KeyboardInterrupt

    summary = train_model(loaded, _spec(tmp_path, steps=10), progress=stop_at_two)
    assert summary.stopped == "interrupted" and summary.card["steps"] == 2
    again = train_model(loaded, _spec(tmp_path, steps=3))
    assert (again.resumed_from, again.card["steps"]) == (2, 3)


def test_trained_checkpoint_loads_as_an_inpainter(tmp_path: Path) -> None:
    loaded = load_manifest(ROOT / "manifests" / "cxr_damage.yaml")
    summary = train_model(loaded, _spec(tmp_path, steps=1))
    fill = MaskAware(weights=summary.output).load()
    image = (np.arange(96 * 80, dtype=np.uint16).reshape(96, 80, 1) * 7) % 65535
    image = image.astype(np.uint16)
    mask = np.zeros((96, 80), bool)
    mask[30:60, 20:50] = True
    a = fill(image, mask, np.random.default_rng(1))
    b = fill(image, mask, np.random.default_rng(1))
    c = fill(image, mask, np.random.default_rng(2))
    assert a.shape == image.shape and a.dtype == np.uint16
    assert np.array_equal(a, b) and not np.array_equal(a[mask], c[mask])
    assert np.array_equal(a[~mask], image[~mask])


def test_a_file_that_is_not_a_maskaware_checkpoint_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(WeightsError, match="not a maskaware checkpoint"):
        MaskAware(weights=str(path)).load()


@pytest.mark.slow
def test_cli_train_stops_on_ctrl_c_and_resumes(tmp_path: Path) -> None:
    output = tmp_path / "shelf.safetensors"
    base = [sys.executable, "-m", "cli", "train", str(ROOT / "manifests/retail_shelf.yaml")]
    base += ["--output", str(output), "--set", "train.resolution=64"]
    base += ["--set", "train.batch_size=2", "--set", f"train.model={TINY.model_dump_json()}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*base, "--steps", "100000"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # A shell ignores SIGINT in the jobs it runs in the background, and children inherit
        # that: give this one the default disposition, as a terminal's Ctrl-C would find it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(12)  # imports, reading the shelves, some steps
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()[-2000:]
    assert b"run the same command to resume" in stderr
    card = json.loads(output.with_suffix(".card.json").read_text())
    assert card["steps"] >= 1
    more = card["steps"] + 2
    done = subprocess.run(
        [*base, "--steps", str(more), "--json"], cwd=ROOT, env=env, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout)["steps"] == more
