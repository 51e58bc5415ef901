"""The training loop of `pipeline train`: steps, time budget, checkpoints, resume, interrupt."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np

from inpaint_ops.inpainters.maskaware import (
    CARD_KEY,
    CONFIG_KEY,
    FORMAT,
    FORMAT_KEY,
    RESOLUTION_KEY,
)
from pipelines.errors import RunError
from pipelines.manifest_loader import LoadedManifest
from pipelines.train import (
    CheckpointStore,
    TrainingSet,
    TrainProgress,
    TrainSummary,
    describe_card,
    recipe_fingerprint,
    resolve_output,
    smoothed,
)
from pipelines.train_spec import TrainSpec

_HISTORY_EVERY = 10
_HELD_OUT_CROPS = 32


class TrainingRun:
    """One `pipeline train` invocation: builds data and model, resumes, trains, checkpoints."""

    def __init__(
        self, loaded: LoadedManifest, spec: TrainSpec, storage_options: dict[str, Any]
    ) -> None:
        import torch

        from inpaint_ops.inpainters.maskaware_net import MaskAwareConfig
        from inpaint_ops.inpainters.maskaware_train import MaskAwareTrainer

        self.loaded, self.spec = loaded, spec
        self.output = resolve_output(loaded, spec)
        self.store = CheckpointStore(self.output, storage_options)
        held = [s for s in ("train", "val", "test") if s not in spec.splits]
        self.data = TrainingSet(loaded, spec, list(spec.splits))
        if not self.data.images:
            raise RunError(
                f"no source images fall in the splits {list(spec.splits)}; "
                "add images or list more splits under train.splits"
            )
        self.held_out = TrainingSet(loaded, spec, held) if held else None
        self.recipe = recipe_fingerprint(loaded, spec, self.data.fingerprint)
        self.device = _device(spec.device)
        amp = None if self.device.type != "cuda" or spec.precision == "fp32" else spec.precision
        if amp == "auto":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        config = MaskAwareConfig(**spec.model.model_dump())
        # Initial weights from the manifest's seed, without touching the global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(loaded.manifest.seed)
            self.trainer = MaskAwareTrainer(
                config, lr=spec.lr, adversarial=spec.adversarial, device=self.device, amp=amp
            )
        self.step, self.elapsed, self.history = 0, 0.0, []
        self.held_out_loss: float | None = None

    def execute(self, *, fresh: bool, progress: TrainProgress | None) -> TrainSummary:
        resumed_from = 0 if fresh else self._resume()
        stopped, start, last_save = "steps", time.perf_counter(), time.perf_counter()
        budget = self.spec.minutes * 60 if self.spec.minutes else None
        loss: float | None = None
        try:
            while self.step < self.spec.steps:
                if budget is not None and self.elapsed + _since(start) >= budget:
                    stopped = "minutes"
                    break
                terms = self.trainer.step(self._batch(self.step))
                self.step += 1
                loss = smoothed(loss, terms["total"], self.step - resumed_from)
                if self.step % _HISTORY_EVERY == 0:
                    self.history.append(
                        {"step": self.step, **_rounded(terms), "smoothed": round(loss, 5)}
                    )
                if progress:
                    progress(self.step, self.spec.steps, loss)
                if _since(last_save) >= self.spec.checkpoint_minutes * 60:
                    self._save(start)
                    start, last_save = time.perf_counter(), time.perf_counter()
        except KeyboardInterrupt:
            stopped = "interrupted"
        card = self._save(start)
        return TrainSummary(
            self.output,
            card,
            resumed_from,
            self.step - resumed_from,
            stopped,
            len(self.data.images),
            len(self.held_out.images) if self.held_out else 0,
            self.history,
        )

    def _batch(self, step: int) -> Any:
        """The batch of ``step``: a function of (seed, step) only, so resuming repeats nothing."""
        import torch

        from inpaint_ops.inpainters.maskaware_train import TrainBatch

        rng = np.random.default_rng([self.loaded.manifest.seed, step])
        return _to_batch(
            self.data,
            rng,
            self.spec.batch_size,
            self.trainer.net.config.style_dim,
            torch,
            TrainBatch,
        )

    def _resume(self) -> int:
        saved = self.store.load_resume()
        if saved is None:
            return 0
        tensors, meta = saved
        if meta.get("recipe") != self.recipe:
            raise RunError(
                f"{self.store.uris['resume']} was saved by a different training recipe (train "
                "block, masks, seed or source images changed); pass --fresh to start over"
            )
        self.trainer.load_state_tensors(tensors)
        self.trainer.load_scaler_state(json.loads(meta.get("scalers", "{}")))
        self.step, self.elapsed = int(meta["step"]), float(meta["elapsed_s"])
        self.history = json.loads(meta["history"])
        return self.step

    def _save(self, start: float) -> dict[str, Any]:
        from safetensors.torch import save

        self.elapsed += _since(start)
        self.held_out_loss = self._held_out_loss()
        card = describe_card(
            self.loaded,
            self.spec,
            data=self.data,
            held_out=len(self.held_out.images) if self.held_out else 0,
            step=self.step,
            elapsed_s=self.elapsed,
            history=self.history,
            held_out_loss=self.held_out_loss,
        )
        dtype = _torch_dtype(self.spec.weights_dtype)
        state = {
            k: v.detach().to("cpu", dtype).contiguous()
            for k, v in self.trainer.net.state_dict().items()
        }
        meta = {
            FORMAT_KEY: FORMAT,
            CONFIG_KEY: json.dumps(self.trainer.net.config.to_dict()),
            RESOLUTION_KEY: str(self.spec.resolution),
            CARD_KEY: json.dumps({k: v for k, v in card.items() if k != "history"}),
        }
        weights = save(state, metadata=meta)
        card["weights_sha256"] = hashlib.sha256(weights).hexdigest()
        card["weights_bytes"] = len(weights)
        resume_meta = {
            "recipe": self.recipe,
            "step": str(self.step),
            "elapsed_s": repr(self.elapsed),
            "history": json.dumps(self.history),
            "scalers": json.dumps(self.trainer.scaler_state()),
        }
        self.store.save(weights, card, save(self.trainer.state_tensors(), metadata=resume_meta))
        return card

    def _held_out_loss(self) -> float | None:
        """Hole L1 of the model's fill on fixed crops of held-out images (None without any)."""
        import torch

        if not self.held_out or not self.held_out.images:
            return None
        from inpaint_ops.inpainters.maskaware_train import TrainBatch

        rng = np.random.default_rng([self.loaded.manifest.seed, 2**32])
        batch = _to_batch(
            self.held_out,
            rng,
            _HELD_OUT_CROPS,
            self.trainer.net.config.style_dim,
            torch,
            TrainBatch,
        )
        batch = batch.to(self.device)
        net = self.trainer.net.eval()
        with torch.inference_mode():
            out = net(batch.image, batch.valid, batch.z, batch.noise)
        hole = 1 - batch.valid
        err = ((out["fill"].float() - batch.image).abs() * hole).sum() / (3 * hole.sum())
        return round(float(err), 6)


def _to_batch(
    data: TrainingSet,
    rng: np.random.Generator,
    count: int,
    style_dim: int,
    torch: Any,
    batch_type: Any,
) -> Any:
    crops, holes = data.crops(rng, count)
    gen = torch.Generator("cpu").manual_seed(int(rng.integers(0, 2**63 - 1)))
    side = crops.shape[1]
    return batch_type(
        image=torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous(),
        valid=torch.from_numpy(~holes)[:, None].float(),
        z=torch.randn(count, style_dim, generator=gen),
        noise=torch.randn(count, 1, side, side, generator=gen),
    )


def _device(choice: str) -> Any:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise RunError("train.device is cuda but no GPU is visible; use auto or cpu")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16}[name]


def _rounded(terms: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 5) for k, v in terms.items()}


def _since(start: float) -> float:
    return time.perf_counter() - start
