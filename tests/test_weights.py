"""Weights safety on real files: malicious pickles are refused unrun, pins gate TorchScript,
and fetch_weights caches remote weights (memory://) behind their hash."""

from __future__ import annotations

import hashlib
import os
import pathlib
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import pytest

from inpaint_ops.weights import (
    WeightsError,
    check_pin,
    load_state_dict,
    load_torchscript,
    read_safetensors_metadata,
    sha256_file,
    sha256_tree,
)
from pipelines.weights import LocalWeights, WeightsFetchError, fetch_weights

ROOT = Path(__file__).resolve().parent.parent


class Payload:
    """Unpickling this touches ``sentinel``: proof that a file was (or was not) unpickled."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (pathlib.Path.touch, (self.sentinel,))


@pytest.fixture
def torch():
    import torch

    torch.set_num_threads(1)
    return torch


@pytest.fixture
def memory_root():
    """A fresh folder on the process-wide memory:// filesystem, removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"/weights-test-{uuid.uuid4().hex[:8]}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return root


def scripted_module_file(torch, path: Path) -> Path:
    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    torch.jit.save(torch.jit.script(Double()), str(path))
    return path


# --- refusing pickles -------------------------------------------------------------------------


@pytest.mark.matrix("C5")
@pytest.mark.parametrize("suffix", [".pt", ".bin"])
def test_malicious_checkpoint_is_refused_without_running(torch, tmp_path, suffix, matrix):
    sentinel = tmp_path / "pwned"
    path = tmp_path / f"model{suffix}"
    torch.save({"weight": torch.zeros(2), "payload": Payload(sentinel)}, path)

    with pytest.raises(WeightsError) as caught:
        load_state_dict(path)

    message = str(caught.value)
    assert str(path) in message and "NOT unpickled" in message and "safetensors" in message
    assert "Unsupported global" in message and "add_safe_globals" not in message
    assert not sentinel.exists()
    first_line = message.replace(str(tmp_path) + "/", "").splitlines()[0]
    matrix.record(marker_present=sentinel.exists(), error=first_line[:200])
    # Control: the payload is live, so the assertion above proves something.
    torch.load(path, weights_only=False)
    assert sentinel.exists()


def test_plain_pickle_is_refused_as_unknown_format(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(Payload(sentinel)))

    with pytest.raises(WeightsError, match=r"unknown weights format '\.pkl'.*\.safetensors"):
        load_state_dict(path)
    assert not sentinel.exists()


def test_corrupt_files_are_weights_errors(torch, tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "broken.safetensors").write_bytes(pickle.dumps({"a": 1}))
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    torch.save({"w": torch.zeros(1), "epoch": 3}, tmp_path / "mixed.pt")

    with pytest.raises(WeightsError, match="not a readable torch checkpoint"):
        load_state_dict(tmp_path / "broken.pt")
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        load_state_dict(tmp_path / "broken.safetensors")
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        load_state_dict(tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="not a flat state dict.*epoch"):
        load_state_dict(tmp_path / "mixed.pt")
    with pytest.raises(WeightsError, match="not found"):
        load_state_dict(tmp_path / "absent.pt")


# --- loading tensors --------------------------------------------------------------------------


def test_safetensors_round_trip_with_metadata(torch, tmp_path):
    from safetensors.torch import save_file

    tensors = {
        "conv.weight": torch.randn(4, 3, 3, 3, dtype=torch.float16),
        "norm.scale": torch.arange(5, dtype=torch.bfloat16),
        "steps": torch.tensor([7, -1], dtype=torch.int64),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, path, metadata={"arch": "lama", "source": "unit-test"})

    loaded = load_state_dict(path)

    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(loaded[name], tensor)
    assert read_safetensors_metadata(path) == {"arch": "lama", "source": "unit-test"}


def test_safetensors_without_metadata_reads_empty(torch, tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, tmp_path / "m.safetensors")
    assert read_safetensors_metadata(tmp_path / "m.safetensors") == {}


@pytest.mark.parametrize("wrapped", [False, True])
def test_torch_state_dict_loads(torch, tmp_path, wrapped):
    state = torch.nn.Linear(3, 2).state_dict()
    path = tmp_path / "linear.pth"
    torch.save({"state_dict": state, "epoch": 3} if wrapped else state, path)

    loaded = load_state_dict(path)

    assert sorted(loaded) == ["bias", "weight"]
    assert all(torch.equal(loaded[k], state[k]) for k in state)


# --- TorchScript behind a pin -----------------------------------------------------------------


def test_torchscript_needs_a_pin(torch, tmp_path):
    path = scripted_module_file(torch, tmp_path / "double.pt")
    actual = sha256_file(path)

    with pytest.raises(
        WeightsError, match=f"can run code when loaded; pin it with weights_sha256: {actual}"
    ):
        load_torchscript(path, "cpu", expected_sha256=None)
    wrong = "0" * 64
    with pytest.raises(WeightsError) as caught:
        load_torchscript(path, "cpu", expected_sha256=wrong)
    assert actual in str(caught.value) and wrong in str(caught.value)


def test_torchscript_loads_with_the_right_pin(torch, tmp_path):
    path = scripted_module_file(torch, tmp_path / "double.pt")

    module = load_torchscript(path, "cpu", expected_sha256=sha256_file(path).upper())

    assert not module.training
    assert torch.equal(module(torch.tensor([1.0, 2.5])), torch.tensor([2.0, 5.0]))


def test_torchscript_pin_is_checked_before_loading(torch, tmp_path):
    path = tmp_path / "not_an_archive.pt"
    path.write_bytes(b"definitely not a zip archive")

    # A torch error here would mean torch.jit.load ran before the pin check.
    with pytest.raises(WeightsError, match="but weights_sha256 pins"):
        load_torchscript(path, "cpu", expected_sha256="a" * 64)
    with pytest.raises(WeightsError, match="matches its pin but is not a loadable TorchScript"):
        load_torchscript(path, "cpu", expected_sha256=sha256_file(path))


def test_check_pin_rules():
    actual = "ab" * 32
    check_pin(actual, None, what="w", required=False)
    check_pin(actual, actual.upper(), what="w", required=True)
    with pytest.raises(WeightsError, match="not a sha256"):
        check_pin(actual, "abc", what="w", required=False)


# --- hashing ----------------------------------------------------------------------------------


def test_sha256_tree_depends_on_bytes_and_names_not_order(tmp_path):
    files = {"model_index.json": b"{}", "unet/weights.bin": b"\x01" * 10, "vae/c.json": b"[]"}
    first = sha256_tree(write_tree(tmp_path / "a", files))
    reversed_order = dict(reversed(list(files.items())))
    assert sha256_tree(write_tree(tmp_path / "b", reversed_order)) == first

    write_tree(tmp_path / "b", {".git/HEAD": b"ref", "unet/.lock": b"x"})
    assert sha256_tree(tmp_path / "b") == first  # dot-names are ignored at any level
    (tmp_path / "b" / "unet" / "weights.bin").write_bytes(b"\x01" * 9 + b"\x02")
    assert sha256_tree(tmp_path / "b") != first
    (tmp_path / "a" / "vae" / "c.json").rename(tmp_path / "a" / "vae" / "d.json")
    assert sha256_tree(tmp_path / "a") != first
    with pytest.raises(WeightsError, match="not a folder"):
        sha256_tree(tmp_path / "a" / "model_index.json")


def test_weights_module_imports_nothing_heavy():
    code = (
        "import sys, inpaint_ops.weights\n"
        "heavy = {'torch', 'safetensors', 'fsspec', 'ray', 'pyarrow'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# --- fetch_weights ----------------------------------------------------------------------------


def test_fetch_local_file_in_place(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    sha = sha256_file(path)

    for uri in (str(path), path.as_uri()):
        got = fetch_weights(uri, expected_sha256=sha, cache_dir=tmp_path / "cache")
        assert got == LocalWeights(path, sha, uri)
    assert not (tmp_path / "cache").exists()
    with pytest.raises(WeightsError, match="but weights_sha256 pins"):
        fetch_weights(str(path), expected_sha256="f" * 64)
    with pytest.raises(WeightsError, match=f"pin it with weights_sha256: {sha}"):
        fetch_weights(str(path), require_pin=True)


def test_fetch_memory_file_is_cached_behind_its_pin(tmp_path, memory_root):
    fs, root = memory_root
    fs.pipe(f"{root}/lama/big-lama.pt", b"model bytes v1")
    uri = f"memory://{root}/lama/big-lama.pt"
    cache = tmp_path / "cache"

    first = fetch_weights(uri, cache_dir=cache)
    assert first.path.parent.parent == cache / "weights"
    assert first.path.name == "big-lama.pt" and len(first.path.parent.name) == 16
    assert first.path.read_bytes() == b"model bytes v1" and first.sha256 == sha256_file(first.path)
    stamp = os.stat(first.path)

    again = fetch_weights(uri, expected_sha256=first.sha256, cache_dir=cache)
    assert again == first
    assert (os.stat(again.path).st_ino, os.stat(again.path).st_mtime_ns) == (
        stamp.st_ino,
        stamp.st_mtime_ns,
    )
    # No temporary copy left; the lock file that serialises a node's actors stays.
    assert sorted(p.name for p in first.path.parent.iterdir()) == [
        ".big-lama.pt.lock",
        "big-lama.pt",
    ]


def test_fetch_memory_file_redownloads_when_cache_does_not_match(tmp_path, memory_root):
    fs, root = memory_root
    fs.pipe(f"{root}/m.safetensors", b"good")
    uri = f"memory://{root}/m.safetensors"
    good = fetch_weights(uri, cache_dir=tmp_path)
    good.path.write_bytes(b"tampered")

    assert fetch_weights(uri, expected_sha256=good.sha256, cache_dir=tmp_path) == good
    assert good.path.read_bytes() == b"good"

    fs.pipe(f"{root}/m.safetensors", b"replaced upstream")
    good.path.write_bytes(b"tampered again")
    with pytest.raises(WeightsError) as caught:
        fetch_weights(uri, expected_sha256=good.sha256, cache_dir=tmp_path)
    assert good.sha256 in str(caught.value) and sha256_bytes(b"replaced upstream") in str(
        caught.value
    )
    # A mismatching download is never published, and its temp file is gone.
    assert good.path.read_bytes() == b"tampered again"
    assert sorted(p.name for p in good.path.parent.iterdir()) == [
        ".m.safetensors.lock",
        "m.safetensors",
    ]


def test_fetch_unpinned_always_downloads(tmp_path, memory_root):
    fs, root = memory_root
    fs.pipe(f"{root}/m.bin", b"v1")
    uri = f"memory://{root}/m.bin"
    assert fetch_weights(uri, cache_dir=tmp_path).path.read_bytes() == b"v1"
    fs.pipe(f"{root}/m.bin", b"v2")
    assert fetch_weights(uri, cache_dir=tmp_path).path.read_bytes() == b"v2"


def test_fetch_memory_folder_recursively(tmp_path, memory_root):
    fs, root = memory_root
    files = {
        "model_index.json": b'{"unet": 1}',
        "unet/diffusion_pytorch_model.safetensors": b"\x00" * 300,
        "vae/config.json": b"{}",
    }
    for relative, data in files.items():
        fs.pipe(f"{root}/pipe/{relative}", data)
    fs.pipe(f"{root}/pipe/.cache/junk", b"skipped")
    local = write_tree(tmp_path / "local", files)

    got = fetch_weights(f"memory://{root}/pipe/", cache_dir=tmp_path / "cache")

    assert got.path.is_dir() and got.path.name == "pipe"
    assert got.sha256 == sha256_tree(local) == sha256_tree(got.path)
    assert not (got.path / ".cache").exists()
    assert (got.path / "vae" / "config.json").read_bytes() == b"{}"
    again = fetch_weights(
        f"memory://{root}/pipe/", expected_sha256=got.sha256, cache_dir=tmp_path / "cache"
    )
    assert again == got


def test_fetch_missing_uri_names_it(tmp_path, memory_root):
    _, root = memory_root
    for uri in (f"memory://{root}/absent.pt", str(tmp_path / "absent.pt")):
        with pytest.raises(WeightsFetchError, match="not found") as caught:
            fetch_weights(uri, cache_dir=tmp_path / "cache")
        assert uri in str(caught.value)


def test_fetch_uses_cache_env(tmp_path, memory_root, monkeypatch):
    fs, root = memory_root
    fs.pipe(f"{root}/w.pt", b"x")
    monkeypatch.setenv("SYNTHFILL_CACHE", str(tmp_path / "env-cache"))
    got = fetch_weights(f"memory://{root}/w.pt")
    assert got.path.is_relative_to(tmp_path / "env-cache" / "weights")
