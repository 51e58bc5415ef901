"""The ``diffusion`` inpainter on tiny real diffusers pipelines (tests/tiny_models.py), offline.

Checks what a user relies on: the spec loads SD, SDXL and plain text-to-image folders through the
manifest union, fills only the holes, is seeded per variant, keeps 16-bit grey images, records the
prompt actually used, and refuses pickled weights before loading anything.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo_like
from pydantic import TypeAdapter, ValidationError
from tiny_models import build_tiny_sd_inpaint, build_tiny_sdxl_inpaint

from inpaint_ops.composite import composite
from inpaint_ops.inpainters import InpainterKind
from inpaint_ops.inpainters.diffusion import Diffusion, check_pipeline_folder
from inpaint_ops.weights import WeightsError

HEIGHT, WIDTH = 64, 80
ADAPTER = TypeAdapter(InpainterKind)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """2 shared cores: torch's default thread pool makes each call ~50x slower under contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def diffusers():
    pytest.importorskip("transformers", reason="needs the `diffusion` extra")
    return pytest.importorskip("diffusers", reason="needs the `diffusion` extra")


@pytest.fixture(scope="module")
def models(diffusers, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("diffusion_models")


@pytest.fixture(scope="module")
def sd_folder(models) -> Path:
    return build_tiny_sd_inpaint(models / "sd", seed=0)


@pytest.fixture(scope="module")
def sd_fill(sd_folder):
    spec = ADAPTER.validate_python(
        {"kind": "diffusion", "weights": str(sd_folder), "steps": 2, "resolution": 64}
    )
    assert isinstance(spec, Diffusion)
    return spec.load("cpu")


def rgb_image_and_mask() -> tuple[np.ndarray, np.ndarray]:
    image = photo_like(HEIGHT, WIDTH, seed=3)
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[20:44, 30:50] = True
    mask[5:9, 70:74] = True
    return image, mask


def assert_fills_only_the_hole(image: np.ndarray, mask: np.ndarray, out: np.ndarray) -> None:
    assert out.shape == image.shape and out.dtype == image.dtype
    assert np.array_equal(out[~mask], image[~mask]), "pixels outside the mask were touched"
    assert np.array_equal(composite(image, out, mask), out)
    assert not np.array_equal(out[mask], image[mask]), "the hole was not filled"


def test_fills_an_rgb_image_through_the_spec(sd_fill):
    image, mask = rgb_image_and_mask()
    before = image.copy()
    out = sd_fill(image, mask, np.random.default_rng(7))
    assert np.array_equal(image, before), "the input image was modified"
    assert_fills_only_the_hole(image, mask, out)


def test_same_seed_same_fill_other_seed_other_fill(sd_fill):
    image, mask = rgb_image_and_mask()
    first = sd_fill(image, mask, np.random.default_rng(7))
    again = sd_fill(image, mask, np.random.default_rng(7))
    other = sd_fill(image, mask, np.random.default_rng(8))
    assert np.array_equal(first, again)
    assert not np.array_equal(first[mask], other[mask])
    # Through `many`, each job keeps its own seed's fill, bit for bit (CPUs fill one at a time).
    batched = sd_fill.many([(image, mask, np.random.default_rng(s)) for s in (7, 8)])
    assert np.array_equal(batched[0], first) and np.array_equal(batched[1], other)


def test_grey_uint16_stays_grey_uint16(sd_fill):
    grey = (photo_like(HEIGHT, WIDTH, seed=5)[:, :, :1].astype(np.uint16) * 257) + 3
    _, mask = rgb_image_and_mask()
    out = sd_fill(grey, mask, np.random.default_rng(1))
    assert_fills_only_the_hole(grey, mask, out)


def test_for_masks_records_the_prompt_used():
    spec = Diffusion(
        weights="models/sd",
        prompt="a shelf",
        negative_prompt="blurry",
        prompts={
            "product_slots": {"prompt": "new product packaging"},
            "damage": {"prompt": "a scratch", "negative_prompt": "text"},
        },
    )
    slots = spec.for_masks(("boxes", "product_slots", "damage"))
    assert (slots.prompt, slots.negative_prompt, slots.prompts) == (
        "new product packaging",
        "blurry",
        {},
    )
    damage = spec.for_masks(("damage",))
    assert (damage.prompt, damage.negative_prompt) == ("a scratch", "text")
    other = spec.for_masks(("cloud_regions",))
    assert (other.prompt, other.negative_prompt, other.prompts) == ("a shelf", "blurry", {})
    assert '"prompts":{}' in slots.model_dump_json() and spec.prompts  # the original is unchanged


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"prompts": {"product_slot": {"prompt": "x"}}}, "unknown mask kinds"),
        ({"prompts": {"": {"prompt": "x"}}}, "unknown mask kinds"),
        ({"prompts": {"damage": {"prompt": "x", "negative": "y"}}}, "Extra inputs"),
        ({"steps": 3, "strength": 0.3}, "no denoising step"),
        ({"scheduler": "dpm++ 2m"}, "pattern"),
        ({"resolution": 100}, "multiple of 8"),
    ],
)
def test_invalid_specs_are_refused(fields, match):
    with pytest.raises(ValidationError, match=match):
        Diffusion(weights="models/sd", **fields)


def test_schema_documents_every_field():
    schema = Diffusion.model_json_schema()
    undocumented = [n for n, p in schema["properties"].items() if not p.get("description")]
    assert not undocumented
    prompt = schema["$defs"]["MaskPrompt"]["properties"]
    assert all(p.get("description") for p in prompt.values())


def test_pickled_weights_are_refused_before_loading(diffusers, sd_folder, tmp_path):
    folder = shutil.copytree(sd_folder, tmp_path / "pickled")
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet")
    unet.save_pretrained(folder / "unet", safe_serialization=False)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(WeightsError, match=r"pickle format \(diffusion_pytorch_model.bin\)"):
        check_pipeline_folder(folder)
    with pytest.raises(WeightsError, match="safetensors"):
        Diffusion(weights=str(folder), steps=2).load("cpu")


def test_variant_only_weights_get_a_clear_error(sd_folder, tmp_path):
    folder = shutil.copytree(sd_folder, tmp_path / "variant")
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    unet.rename(unet.with_name("diffusion_pytorch_model.fp16.safetensors"))
    with pytest.raises(WeightsError, match="diffusers cannot load it.*safetensors only"):
        Diffusion(weights=str(folder), steps=2).load("cpu")


def test_a_folder_that_is_not_a_pipeline_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="no model_index.json"):
        Diffusion(weights=str(tmp_path), steps=2).load("cpu")
    with pytest.raises(FileNotFoundError):
        Diffusion(weights=str(tmp_path / "absent"), steps=2).load("cpu")


def test_scheduler_swap_and_its_errors(sd_folder):
    image, mask = rgb_image_and_mask()
    spec = Diffusion(weights=str(sd_folder), steps=2, resolution=64)
    swapped = spec.model_copy(
        update={
            "scheduler": "DPMSolverMultistepScheduler",
            "scheduler_options": {"solver_order": 1},
        }
    )
    default = spec.load("cpu")(image, mask, np.random.default_rng(7))
    dpm = swapped.load("cpu")(image, mask, np.random.default_rng(7))
    assert_fills_only_the_hole(image, mask, dpm)
    assert not np.array_equal(default, dpm)
    for update, match in [
        ({"scheduler": "NoSuchScheduler"}, "not a diffusers scheduler"),
        ({"scheduler": "FlowMatchEulerDiscreteScheduler"}, "compatible: .*DDIMScheduler"),
        ({"scheduler_options": {"use_karass_sigmas": True}}, "not parameters of DDIMScheduler"),
    ]:
        with pytest.raises(ValueError, match=match):
            spec.model_copy(update=update).load("cpu")


def test_sdxl_loads_and_fills_through_the_same_spec(models):
    folder = build_tiny_sdxl_inpaint(models / "sdxl", seed=0)
    fill = Diffusion(weights=str(folder), steps=2, prompt="a shelf").load("cpu")  # native: 64
    assert fill.resolution == 64
    image, mask = rgb_image_and_mask()
    out = fill(image, mask, np.random.default_rng(7))
    assert_fills_only_the_hole(image, mask, out)
    assert np.array_equal(out, fill(image, mask, np.random.default_rng(7)))


def test_a_text_to_image_model_inpaints_too(diffusers, sd_folder, models):
    """A chest X-ray model is usually a fine-tuned text-to-image SD (4-channel UNet)."""
    parts = diffusers.StableDiffusionInpaintPipeline.from_pretrained(
        sd_folder, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    config = {**parts.unet.config, "in_channels": 4}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = diffusers.UNet2DConditionModel.from_config(config)
    components = {k: v for k, v in parts.components.items() if k != "unet"}
    folder = models / "text_to_image"
    diffusers.StableDiffusionPipeline(**components, unet=unet).save_pretrained(folder)
    fill = Diffusion(weights=str(folder), steps=2, prompt="chest x-ray").load("cpu")
    grey = photo_like(HEIGHT, WIDTH, seed=9)[:, :, 1:2]
    _, mask = rgb_image_and_mask()
    out = fill(grey, mask, np.random.default_rng(3))
    assert_fills_only_the_hole(grey, mask, out)


def test_without_the_extra_the_error_says_what_to_install(monkeypatch, sd_folder):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'synthfill\[diffusion\]'"):
        Diffusion(weights=str(sd_folder), steps=2).load("cpu")
