"""The ``train:`` block of a manifest: how `pipeline train` fits a ``maskaware`` model.

Training reads the manifest's own ``source`` and draws the manifest's own ``masks``, so a model
learns the images and the holes it will be asked to fill. Nothing here changes the dataset a
`pipeline run` of the same manifest builds, so the block is not part of the recipe fingerprint
(the weights' sha256 is, on every row).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _ordered(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"[low, high] must have low <= high, got {list(pair)}")
    return pair


class ModelShape(_Spec):
    """Sizes of the network (bigger trains slower; scale up on a GPU)."""

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ModelShape:
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        return self

    channels: int = Field(32, ge=8, le=256, description="Convolution width at full resolution.")
    dim: int = Field(128, ge=32, le=1024, multiple_of=8, description="Token width (1/8 res).")
    depth: int = Field(4, ge=1, le=32, description="Transformer blocks.")
    heads: int = Field(4, ge=1, le=32, description="Attention heads; must divide `dim`.")
    window: int = Field(8, ge=2, le=32, description="Attention window side, in tokens.")
    style_dim: int = Field(64, ge=8, le=512, description="Size of the seeded style vector.")
    refine_blocks: int = Field(4, ge=0, le=16, description="Dilated refinement blocks.")


class TrainSpec(_Spec):
    """Self-supervised training on the manifest's source images and masks."""

    output: str = Field(
        "checkpoints/{name}.safetensors",
        description="Checkpoint path or URL; `{name}` is the manifest's name. The model card "
        "is written next to it (`.card.json`), and the state to resume from as "
        "`.resume.safetensors`.",
    )
    resolution: int = Field(
        128, ge=64, le=2048, multiple_of=64, description="Side of the square training crops."
    )
    batch_size: int = Field(8, ge=1, le=1024, description="Crops per step.")
    steps: int = Field(2000, ge=1, description="Stop after this many steps in all.")
    minutes: float | None = Field(
        None, gt=0, description="Also stop after this many minutes of training (all sessions)."
    )
    lr: float = Field(5e-4, gt=0, le=1, description="AdamW learning rate.")
    splits: list[Literal["train", "val", "test"]] = Field(
        ["train"],
        min_length=1,
        description="Which of the manifest's splits to train on; the others are held out and "
        "scored at each checkpoint.",
    )
    large_holes: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of crops that also get MAT-style free-form holes, so the model "
        "learns large holes even when the manifest's masks are small.",
    )
    hole_ratio: Annotated[tuple[float, float], AfterValidator(_ordered)] = Field(
        (0.2, 0.45), description="Hole share of a crop for those free-form holes, [low, high]."
    )
    zoom: Annotated[tuple[float, float], AfterValidator(_ordered)] = Field(
        (1.0, 3.0),
        description="Each crop is cut from the image resized so its shorter side is this "
        "many crop sides, [low, high]: 1 sees the whole image, 3 sees a third of it.",
    )
    adversarial: float = Field(
        0.0, ge=0, le=10, description="Weight of the PatchGAN loss; 0 turns it off."
    )
    checkpoint_minutes: float = Field(
        2.0, gt=0, description="Write a checkpoint this often (and when stopped)."
    )
    weights_dtype: Literal["float32", "float16"] = Field(
        "float16",
        description="Precision of the published weights (half the size; inference computes "
        "in float32 on CPUs). The resume state is always float32.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' trains on a GPU when one is visible."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Mixed precision on CUDA ('auto': bf16 where supported)."
    )
    model: ModelShape = Field(default_factory=ModelShape)

    @model_validator(mode="after")
    def _windows_tile_the_crop(self) -> TrainSpec:
        tile = 8 * self.model.window  # 8 px per token, `window` tokens per attention window
        if self.resolution % tile:
            raise ValueError(
                f"resolution ({self.resolution}) must be a multiple of 8 x model.window ({tile})"
            )
        return self
