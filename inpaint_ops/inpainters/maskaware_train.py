"""Training the ``maskaware`` network: losses, an optional patch discriminator, one step at a time.

Pure torch over float batches; reading images and drawing masks is the pipeline's job
(``pipelines.train``). The reconstruction loss is L1 weighted toward the hole and the ring of
known pixels around it (where seams show), on the coarse and the refined fill; the Laplace
scale head is trained by its negative log-likelihood on the hole. An optional PatchGAN
discriminator (hinge loss) pushes fills toward sharp texture; it is off by default because on
a CPU budget of minutes it costs more than it gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from inpaint_ops.inpainters.maskaware_net import MaskAwareConfig, MaskAwareNet

HOLE_WEIGHT, RING_WEIGHT, RING_PX, COARSE_WEIGHT, SCALE_WEIGHT = 5.0, 1.0, 9, 0.5, 0.05


@dataclass(frozen=True)
class TrainBatch:
    """image (B,3,R,R) in [0,1]; valid (B,1,R,R) 1=known; z (B,style); noise (B,1,R,R)."""

    image: Tensor
    valid: Tensor
    z: Tensor
    noise: Tensor

    def to(self, device: torch.device) -> TrainBatch:
        return TrainBatch(*(t.to(device, non_blocking=True) for t in self.__dict__.values()))


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: one real/fake score per ~30 px patch, from image + hole."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        layers: list[nn.Module] = []
        for cin, cout in [(4, c), (c, 2 * c), (2 * c, 4 * c)]:
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(4 * c, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: Tensor, hole: Tensor) -> Tensor:
        return self.net(torch.cat([image * 2 - 1, hole], dim=1))


def reconstruction_weights(valid: Tensor) -> Tensor:
    """1 on known pixels, + HOLE_WEIGHT in the hole, + RING_WEIGHT on the ring around it."""
    hole = 1 - valid
    near = F.max_pool2d(hole, RING_PX, stride=1, padding=RING_PX // 2)
    return 1 + HOLE_WEIGHT * hole + RING_WEIGHT * (near - hole)


def losses(out: dict[str, Tensor], batch: TrainBatch) -> dict[str, Tensor]:
    """The generator's loss terms (before any adversarial term); ``total`` is their sum."""
    weights = reconstruction_weights(batch.valid)
    norm = weights.mean()
    fill_l1 = ((out["fill"] - batch.image).abs() * weights).mean() / norm
    coarse_l1 = ((out["coarse"] - batch.image).abs() * weights).mean() / norm
    hole = 1 - batch.valid
    error = (batch.image - out["fill"].detach()).abs()
    nll = (error * torch.exp(-out["log_scale"]) + out["log_scale"]) * hole
    scale_nll = nll.sum() / (3 * hole.sum()).clamp(min=1)
    hole_l1 = ((out["fill"] - batch.image).abs() * hole).sum() / (3 * hole.sum()).clamp(min=1)
    total = fill_l1 + COARSE_WEIGHT * coarse_l1 + SCALE_WEIGHT * scale_nll
    return {"total": total, "fill_l1": fill_l1, "hole_l1": hole_l1.detach(), "scale_nll": scale_nll}


class MaskAwareTrainer:
    """Network, optimisers and (optional) discriminator; ``step`` trains on one batch."""

    def __init__(
        self,
        config: MaskAwareConfig,
        *,
        lr: float,
        adversarial: float,
        device: torch.device,
        amp: str | None,
    ) -> None:
        self.device, self.adversarial = device, adversarial
        self.net = MaskAwareNet(config).to(device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr, betas=(0.9, 0.99))
        self.disc = PatchDiscriminator().to(device) if adversarial > 0 else None
        self.disc_opt = (
            torch.optim.AdamW(self.disc.parameters(), lr=lr, betas=(0.5, 0.99))
            if self.disc is not None
            else None
        )
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
        # One loss scaler per optimiser: fp16 on CUDA only (bf16 and fp32 need none).
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.disc_scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    def _autocast(self) -> Any:
        enabled = self.amp_dtype is not None and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled)

    def step(self, batch: TrainBatch) -> dict[str, float]:
        """One optimisation step; returns the loss terms as floats."""
        self.net.train()
        batch = batch.to(self.device)
        with self._autocast():
            out = self.net(batch.image, batch.valid, batch.z, batch.noise)
            terms = losses({k: v.float() for k, v in out.items()}, batch)
            total = terms["total"]
            if self.disc is not None:
                fake = out["fill"] * (1 - batch.valid) + batch.image * batch.valid
                terms["adv"] = -self.disc(fake, 1 - batch.valid).mean()
                total = total + self.adversarial * terms["adv"]
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.disc is not None:
            terms["disc"] = self._disc_step(out["fill"].detach(), batch)
        return {k: float(v.detach()) for k, v in terms.items()}

    def _disc_step(self, fill: Tensor, batch: TrainBatch) -> Tensor:
        assert self.disc is not None and self.disc_opt is not None
        hole = 1 - batch.valid
        fake = fill * hole + batch.image * batch.valid
        with self._autocast():
            loss = F.relu(1 - self.disc(batch.image, hole)).mean()
            loss = loss + F.relu(1 + self.disc(fake, hole)).mean()
        self.disc_opt.zero_grad(set_to_none=True)
        self.disc_scaler.scale(loss).backward()
        self.disc_scaler.step(self.disc_opt)
        self.disc_scaler.update()
        return loss.detach()

    def state_tensors(self) -> dict[str, Tensor]:
        """Everything needed to resume, as a flat name -> tensor map (safetensors-ready)."""
        state = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        state.update(_flatten_optimizer("opt", self.opt))
        if self.disc is not None and self.disc_opt is not None:
            state.update({f"disc.{k}": v for k, v in self.disc.state_dict().items()})
            state.update(_flatten_optimizer("disc_opt", self.disc_opt))
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def scaler_state(self) -> dict[str, Any]:
        """The fp16 loss scalers' state (scale, growth tracker): resumed runs keep their scale."""
        return {"net": self.scaler.state_dict(), "disc": self.disc_scaler.state_dict()}

    def load_scaler_state(self, state: dict[str, Any]) -> None:
        if state.get("net"):
            self.scaler.load_state_dict(state["net"])
        if state.get("disc"):
            self.disc_scaler.load_state_dict(state["disc"])

    def load_state_tensors(self, state: dict[str, Tensor]) -> None:
        """Restore what ``state_tensors`` saved (the same config and options)."""
        self.net.load_state_dict(_prefixed(state, "net."))
        _restore_optimizer(self.opt, _prefixed(state, "opt."))
        if self.disc is not None and self.disc_opt is not None:
            self.disc.load_state_dict(_prefixed(state, "disc."))
            _restore_optimizer(self.disc_opt, _prefixed(state, "disc_opt."))


def _prefixed(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    flat = {}
    for index, values in opt.state_dict()["state"].items():
        for name, value in values.items():
            flat[f"{prefix}.{index}.{name}"] = torch.as_tensor(value)
    return flat


def _restore_optimizer(opt: torch.optim.Optimizer, flat: dict[str, Tensor]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    saved = opt.state_dict()
    saved["state"] = state
    opt.load_state_dict(saved)
