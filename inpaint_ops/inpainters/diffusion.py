"""``diffusion``: a diffusers inpainting pipeline (Stable Diffusion, SDXL, or any latent diffusion).

The weights are a folder in diffusers' ``save_pretrained`` layout (``model_index.json`` plus one
sub-folder per component), local or fetched from object storage by the pipeline. A dedicated
inpainting model (UNet with 9 input channels) is driven as such; a plain text-to-image model (a
chest X-ray model fine-tuned from Stable Diffusion, say) is mapped by diffusers'
``AutoPipelineForInpainting`` to the same pipeline, which then repaints the hole while re-imposing
the known pixels at every step. It needs the optional extra: ``pip install 'synthfill[diffusion]'``.

The prompt can depend on the masks (``prompts``: "empty shelf slot" for product slots, "clouds"
for cloud regions); ``for_masks`` resolves it before loading, so each row's ``inpainter_params``
records the prompt that was really used. Every window gets its own CPU ``torch.Generator`` seeded
from the variant seed: the starting noise is identical on every machine, so a row can be
regenerated alone (bit for bit on the same hardware and library versions).

Safety decisions:

- safetensors only (``use_safetensors=True``): pickled ``.bin``/``.ckpt`` weights can run code
  when loaded and are refused before anything is read; convert them first.
- local files only, nothing downloaded at load, and no custom code from the folder
  (``trust_remote_code=False``): what runs is what the installed diffusers ships.
- the NSFW safety checker is not loaded. On a hit it silently replaces the image with black
  pixels, which would enter the dataset as a "fill" with nothing on the row to say so; it is also
  a second 1 GB model per worker. What a model may generate is decided by choosing the model and
  the prompts, both recorded on every row.
- Images go in as float tensors, not 8-bit PIL images, so 16-bit X-rays keep their precision up to
  the model, and a fill containing NaN or infinity (fp16 overflow) is an error, never pasted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from inpaint_ops.inpainters.base import InpaintFn
from inpaint_ops.inpainters.neural import (
    NeuralInpainter,
    Precision,
    WindowedFill,
    generator,
    torch_device,
    weights_path,
    windows_per_call,
)
from inpaint_ops.weights import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, WeightsError

INSTALL_HINT = "pip install 'synthfill[diffusion]'"
_SCHEDULER_NAME = r"^[A-Z][A-Za-z0-9]*Scheduler$"
ScalarOption = bool | int | float | str


class MaskPrompt(BaseModel):
    """The prompts used when the masks are of one kind."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(description="What to paint into holes of this mask kind.")
    negative_prompt: str | None = Field(
        None,
        description="What to steer away from for this mask kind; default: the inpainter's "
        "`negative_prompt`.",
    )


class Diffusion(NeuralInpainter):
    """A diffusers inpainting pipeline: Stable Diffusion, SDXL or another latent diffusion model.

    Seeded: each variant starts from its own noise, so variants of one image differ. Runs on the
    CPU (slowly: minutes per window for a real model) or a GPU.
    """

    kind: Literal["diffusion"] = Field(
        "diffusion", description="A diffusers inpainting pipeline (SD, SDXL, ...)."
    )
    weights: str = Field(
        description="Folder holding the pipeline in diffusers' save_pretrained layout "
        "(model_index.json and one sub-folder per component, safetensors weights): a path "
        "(relative to the manifest) or an fsspec URL (s3://bucket/models/sd-inpainting)."
    )
    resolution: int | None = Field(  # type: ignore[assignment]
        None,
        ge=64,
        le=4096,
        multiple_of=8,
        description="Side of the square window the model fills (a multiple of 8); default: the "
        "model's native size (512 for SD 1.x/2.x inpainting, 1024 for SDXL).",
    )
    prompt: str = Field("", description="What to paint into the holes (CLIP reads 77 tokens).")
    negative_prompt: str = Field(
        "", description="What to steer away from (used when `guidance` > 1)."
    )
    prompts: dict[str, MaskPrompt] = Field(
        default_factory=dict,
        description="Prompts per mask kind, e.g. {product_slots: {prompt: new product "
        "packaging}}: the first of the manifest's mask kinds listed here replaces `prompt` "
        "(and `negative_prompt` if it sets one); rows record the prompt used.",
    )
    steps: int = Field(25, ge=1, le=500, description="Denoising steps (before `strength`).")
    guidance: float = Field(
        7.5,
        ge=0,
        le=50,
        description="Classifier-free guidance scale: how strongly the fill follows the prompt; "
        "1 or less turns guidance (and the negative prompt) off and halves the cost.",
    )
    strength: float = Field(
        1.0,
        gt=0,
        le=1,
        description="How far the holes are noised before denoising: 1 paints them anew, lower "
        "keeps more of what is there; only steps x strength steps run.",
    )
    scheduler: str | None = Field(
        None,
        pattern=_SCHEDULER_NAME,
        description="A diffusers scheduler class to use instead of the one saved with the "
        "model, e.g. DPMSolverMultistepScheduler or EulerAncestralDiscreteScheduler.",
    )
    scheduler_options: dict[str, ScalarOption] = Field(
        default_factory=dict,
        description="Overrides of the scheduler's config, e.g. {use_karras_sigmas: true}; "
        "each must be a parameter of the scheduler class.",
    )

    @model_validator(mode="after")
    def _check(self) -> Diffusion:
        if int(self.steps * self.strength) < 1:
            raise ValueError(
                f"steps x strength = {self.steps} x {self.strength} runs no denoising step; "
                "raise steps or strength"
            )
        check_prompt_kinds(self.prompts)
        return self

    def for_masks(self, mask_kinds: tuple[str, ...]) -> Diffusion:
        """This spec with the prompts of the first of ``mask_kinds`` listed in ``prompts``."""
        chosen = next((self.prompts[k] for k in mask_kinds if k in self.prompts), None)
        update: dict[str, Any] = {"prompts": {}}
        if chosen is not None:
            update["prompt"] = chosen.prompt
            if chosen.negative_prompt is not None:
                update["negative_prompt"] = chosen.negative_prompt
        return self.model_copy(update=update)

    def check_files(self, weights: Path) -> None:
        """A diffusers pipeline folder with safetensors weights (checked without diffusers)."""
        check_pipeline_folder(weights)

    def load(self, device: str = "cpu", weights: Path | None = None) -> InpaintFn:
        """Load the pipeline from its folder once; fills then run it over batches of windows."""
        import torch

        diffusers = import_diffusers()
        folder = weights_path(self, weights)
        index = check_pipeline_folder(folder)
        scheduler = _scheduler_class(diffusers, self, index)
        dev = torch_device(device)
        pipe = _load_pipeline(diffusers, folder, index, _dtype(dev, self.precision)).to(dev)
        pipe.set_progress_bar_config(disable=True)
        if scheduler is not None:
            pipe.scheduler = scheduler.from_config(pipe.scheduler.config, **self.scheduler_options)
        resolution = self.resolution or _native_resolution(pipe)
        call = self._call_options(pipe)

        def forward(pixels: np.ndarray, holes: np.ndarray, seeds: list[int]) -> np.ndarray:
            batch = len(seeds)
            image = torch.from_numpy(pixels).permute(0, 3, 1, 2)
            hole = torch.from_numpy(holes)[:, None].to(torch.float32)  # 1 = repaint
            with torch.inference_mode():
                out = pipe(
                    image=image,
                    mask_image=hole,
                    prompt=[self.prompt] * batch,
                    negative_prompt=[self.negative_prompt] * batch,
                    generator=[generator(seed) for seed in seeds],
                    height=pixels.shape[1],
                    width=pixels.shape[2],
                    **call,
                ).images
            return _checked(np.asarray(out, dtype=np.float32), type(pipe).__name__)

        per_call = windows_per_call(dev, self.batch_size)
        return WindowedFill(forward, resolution, self.context, per_call, dev.type)

    def _call_options(self, pipe: Any) -> dict[str, Any]:
        """Keyword arguments of every call, checked once against the pipeline's signature."""
        import inspect

        call = {
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            "strength": self.strength,
            "output_type": "np",
        }
        accepted = inspect.signature(pipe.__call__).parameters
        wanted = [*call, "image", "mask_image", "prompt", "negative_prompt", "generator", "width"]
        missing = [name for name in wanted if name not in accepted]
        if missing:
            raise ValueError(
                f"{type(pipe).__name__} does not take {', '.join(missing)}: the diffusion "
                "inpainter drives Stable Diffusion-style inpainting pipelines (SD, SDXL)"
            )
        return call


def check_prompt_kinds(prompts: dict[str, MaskPrompt]) -> None:
    """Raise ValueError unless every key of ``prompts`` is a known mask kind."""
    from inpaint_ops.masks import MASK_KINDS

    known = sorted(member.model_fields["kind"].default for member in MASK_KINDS)
    unknown = [kind for kind in prompts if kind not in known]
    if unknown:
        raise ValueError(
            f"prompts for unknown mask kinds {unknown}; mask kinds are: {', '.join(known)}"
        )


def import_diffusers() -> Any:
    """The diffusers module, or an ImportError saying how to install the extra."""
    try:
        import diffusers
        import transformers  # noqa: F401  (the text encoders)
    except ImportError as exc:
        raise ImportError(
            f"the diffusion inpainter needs diffusers and transformers ({exc}): {INSTALL_HINT}"
        ) from exc
    return diffusers


def check_pipeline_folder(folder: Path) -> dict[str, Any]:
    """``model_index.json`` of a diffusers pipeline folder, after refusing pickled weights.

    Cheap (reads one JSON file and lists folders, no diffusers import), so it can run before any
    compute. Raises WeightsError naming the file and the fix.
    """
    index_file = Path(folder) / "model_index.json"
    if not index_file.is_file():
        raise WeightsError(
            f"{folder}: not a diffusers pipeline folder (no model_index.json); save the "
            "pipeline with pipeline.save_pretrained(folder, safe_serialization=True) (a "
            "single-file checkpoint: load it with from_single_file first)"
        )
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{index_file}: not readable JSON ({exc})") from None
    if not isinstance(index, dict):
        raise WeightsError(f"{index_file}: not a diffusers model index (a JSON object)")
    for name in sorted(k for k in index if not k.startswith("_")):  # one folder per component
        part = Path(folder) / name
        files = [p for p in part.iterdir() if p.is_file()] if part.is_dir() else []
        pickled = sorted(p.name for p in files if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickled and not any(p.suffix.lower() in SAFETENSORS_SUFFIXES for p in files):
            raise WeightsError(
                f"{part}: weights only in pickle format ({', '.join(pickled)}), which can run "
                "code when loaded; synthfill loads safetensors only. Convert the folder once, in "
                "a sandbox: load it with diffusers, then save_pretrained(folder, "
                "safe_serialization=True)"
            )
    return index


def _load_pipeline(diffusers: Any, folder: Path, index: dict[str, Any], dtype: Any) -> Any:
    import warnings

    options: dict[str, Any] = {}
    if "safety_checker" in index:  # pipelines without one (SDXL) warn about the argument
        options = {"safety_checker": None, "feature_extractor": None}
        options["requires_safety_checker"] = False
    try:
        with warnings.catch_warnings():
            # diffusers 0.42 renamed torch_dtype to dtype; older releases know only torch_dtype.
            warnings.filterwarnings("ignore", ".*torch_dtype.* is deprecated", FutureWarning)
            return diffusers.AutoPipelineForInpainting.from_pretrained(
                str(folder),
                local_files_only=True,
                use_safetensors=True,
                trust_remote_code=False,
                torch_dtype=dtype,  # loaded in it: casting afterwards skips fp32-only modules
                **options,
            )
    except (OSError, ValueError) as exc:
        hint = (
            "synthfill loads safetensors only: re-save the pipeline with "
            "save_pretrained(folder, safe_serialization=True) (a folder holding only a variant "
            "such as *.fp16.safetensors must be re-saved without the variant)"
            if "safetensors" in str(exc)
            else "check it is a complete diffusers inpainting or text-to-image pipeline"
        )
        raise WeightsError(f"{folder}: diffusers cannot load it ({exc}); {hint}") from exc


def _dtype(device: Any, precision: Precision) -> Any:
    """float32 on the CPU or with fp32; bf16/fp16 on CUDA as asked ('auto': bf16 if supported)."""
    import torch

    if device.type != "cuda" or precision == "fp32":
        return torch.float32
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _scheduler_class(diffusers: Any, spec: Diffusion, index: dict[str, Any]) -> type | None:
    """The scheduler class to swap in, checked before any weights are loaded (None: keep)."""
    import inspect

    if spec.scheduler is None and not spec.scheduler_options:
        return None
    saved = index.get("scheduler")
    current = getattr(diffusers, saved[1], None) if _is_part(saved) else None
    if current is None:
        raise ValueError(f"the model's scheduler {saved!r} is not one diffusers knows")
    cls = current if spec.scheduler is None else getattr(diffusers, spec.scheduler, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(
            f"scheduler {spec.scheduler!r} is not a diffusers scheduler; e.g. "
            "DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, DDIMScheduler"
        )
    # diffusers lists, per scheduler class, the names of those sharing its config.
    listed = getattr(current, "_compatibles", ())
    compatible = {getattr(c, "__name__", str(c)) for c in listed} | {current.__name__}
    if cls.__name__ not in compatible:
        raise ValueError(
            f"scheduler {cls.__name__} does not work with this model's {current.__name__}; "
            f"compatible: {', '.join(sorted(compatible))}"
        )
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(spec.scheduler_options) - params)
    if unknown:
        raise ValueError(f"scheduler_options {unknown} are not parameters of {cls.__name__}")
    return cls


def _is_part(value: Any) -> bool:
    """A component entry of model_index.json: [library, class name]."""
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _native_resolution(pipe: Any) -> int:
    """The side the model was trained at: its latent sample size x the VAE's scale factor."""
    unet = getattr(pipe, "unet", None)
    size = getattr(pipe, "default_sample_size", None) or getattr(unet, "config", {}).get(
        "sample_size"
    )
    if size is None:
        raise ValueError(f"{type(pipe).__name__}: no native size known; set `resolution`")
    side = size if isinstance(size, int) else max(size)
    return int(side * pipe.vae_scale_factor)


def _checked(images: np.ndarray, pipeline: str) -> np.ndarray:
    if not np.isfinite(images).all():
        raise FloatingPointError(
            f"{pipeline} returned NaN or infinite pixels (fp16 overflow?); use precision "
            "bf16 or fp32"
        )
    return np.clip(images, 0.0, 1.0)
