"""The tiny offline models of tests/tiny_models.py load back the way a user's real ones would
(diffusers AutoPipelineForInpainting from a local safetensors folder under HF_HUB_OFFLINE=1,
torch.jit.load for LaMa) and behave like them: seeded, deterministic, right shapes."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo_like
from PIL import Image
from tiny_models import (
    build_tiny_lama,
    build_tiny_sd_inpaint,
    build_tiny_sdxl_inpaint,
    write_malicious_pickle,
)

SIZE = 64
PIPELINES = {
    "sd": (build_tiny_sd_inpaint, "StableDiffusionInpaintPipeline"),
    "sdxl": (build_tiny_sdxl_inpaint, "StableDiffusionXLInpaintPipeline"),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """2 shared cores: torch's default thread pool makes each call ~50x slower under contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def diffusers():
    """diffusers, imported once for the module (4-7 s); skipped without the `diffusion` extra."""
    pytest.importorskip("transformers", reason="needs the `diffusion` extra")
    return pytest.importorskip("diffusers", reason="needs the `diffusion` extra")


@pytest.fixture(scope="module")
def pipeline_folders(diffusers, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_pipelines")
    return {name: build(root / name, seed=0) for name, (build, _) in PIPELINES.items()}


@pytest.fixture(scope="module")
def inpaint_inputs() -> tuple[Image.Image, Image.Image]:
    image = Image.fromarray(photo_like(SIZE, SIZE, seed=3))
    hole = np.zeros((SIZE, SIZE), np.uint8)
    hole[16:48, 20:44] = 255
    return image, Image.fromarray(hole)


def load_pipeline(diffusers, folder: Path, monkeypatch):
    """Load as a user's downloaded model folder would be: offline, local files, safetensors."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = diffusers.AutoPipelineForInpainting.from_pretrained(
        folder,
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
        use_safetensors=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe, inputs, seed: int) -> np.ndarray:
    image, mask = inputs
    return pipe(
        prompt="a product on a shelf",
        image=image,
        mask_image=mask,
        height=SIZE,
        width=SIZE,
        num_inference_steps=2,
        strength=1.0,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    ).images


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_reloads_offline_and_is_seeded(
    name, diffusers, pipeline_folders, inpaint_inputs, monkeypatch
):
    pipe = load_pipeline(diffusers, pipeline_folders[name], monkeypatch)
    assert type(pipe).__name__ == PIPELINES[name][1]
    assert pipe.unet.config.in_channels == 9
    # The saved tokenizer kept its vocabulary (transformers 5 can silently build an empty one).
    assert len(pipe.tokenizer) > 500
    ids = pipe.tokenizer("the shelf")["input_ids"]
    assert len(set(ids)) > 3, ids

    first = call(pipe, inpaint_inputs, seed=7)
    again = call(pipe, inpaint_inputs, seed=7)
    other = call(pipe, inpaint_inputs, seed=8)
    assert first.shape == (1, SIZE, SIZE, 3)
    assert first.dtype == np.float32
    assert np.isfinite(first).all()
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert np.array_equal(first, again), "same generator seed must give bit-identical output"
    assert not np.array_equal(first, other), "another seed must give another output"


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_is_safetensors_only_and_weights_follow_seed(
    name, diffusers, pipeline_folders, tmp_path
):
    from safetensors.torch import load_file

    folder = pipeline_folders[name]
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    unet_file = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert unet_file.is_file()

    build = PIPELINES[name][0]
    same = load_file(build(tmp_path / "same", seed=0) / unet_file.relative_to(folder))
    other = load_file(build(tmp_path / "other", seed=1) / unet_file.relative_to(folder))
    original = load_file(unet_file)
    assert original.keys() == same.keys() == other.keys()
    assert all(torch.equal(original[k], same[k]) for k in original)
    assert not all(torch.equal(original[k], other[k]) for k in original)


@pytest.fixture(scope="module")
def lama_path(tmp_path_factory) -> Path:
    return build_tiny_lama(tmp_path_factory.mktemp("tiny_lama") / "big-lama.pt", seed=0)


def lama_inputs(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.from_numpy(photo_like(height, width, seed=5)).permute(2, 0, 1)[None].float()
    mask = torch.zeros(1, 1, height, width, dtype=torch.int64)
    mask[..., 8:40, 12:36] = 1
    return image / 255.0, mask


def test_lama_stand_in_has_the_torchscript_contract(lama_path):
    module = torch.jit.load(str(lama_path), map_location="cpu").eval()
    assert isinstance(module, torch.jit.ScriptModule)
    image, mask = lama_inputs(64, 48)
    with torch.no_grad():
        out = module(image, mask)
    assert out.shape == (1, 3, 64, 48)
    assert out.dtype == torch.float32
    assert float(out.min()) >= -1e-4 and float(out.max()) <= 1 + 1e-4
    keep = (mask == 0).expand_as(image)
    assert torch.equal(out[keep], image[keep]), "pixels outside the hole come back unchanged"
    assert (out - image)[~keep].abs().mean() > 0.01, "the hole is filled with something new"

    # The fill depends on the image, not only on the mask.
    with torch.no_grad():
        other = module(1.0 - image, mask)
    assert not torch.equal(out[~keep], other[~keep])

    with pytest.raises(torch.jit.Error, match="multiples of 8"), torch.no_grad():
        module(torch.rand(1, 3, 60, 48), torch.zeros(1, 1, 60, 48, dtype=torch.int64))


def test_lama_weights_follow_seed(lama_path, tmp_path):
    image, mask = lama_inputs(64, 48)
    outputs = []
    for path in (
        lama_path,
        build_tiny_lama(tmp_path / "a.pt"),
        build_tiny_lama(tmp_path / "b.pt", seed=1),
    ):
        with torch.no_grad():
            outputs.append(torch.jit.load(str(path), map_location="cpu")(image, mask))
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


def test_malicious_pickle_runs_only_when_fully_unpickled(tmp_path):
    sentinel = tmp_path / "pwned"
    path = write_malicious_pickle(tmp_path / "model.pt", sentinel)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not sentinel.exists()
    # The payload is live: a full unpickle (never done by the loaders) runs it.
    torch.load(path, weights_only=False)
    assert sentinel.exists()
