"""Small real models built offline, for tests and benchmarks.

Every builder makes random-weight models from tiny configs in code (nothing is downloaded), with
weights fixed by ``seed``, and writes them in the format a user's real model would come in:

- :func:`build_tiny_sd_inpaint`: a Stable Diffusion inpainting pipeline folder (diffusers
  ``save_pretrained`` layout, safetensors only), ~1.7 M parameters, ~7 MB.
- :func:`build_tiny_sdxl_inpaint`: the same for Stable Diffusion XL inpainting (two text encoders),
  ~1.8 M parameters, ~7 MB.
- :func:`build_tiny_lama`: a TorchScript file with big-lama.pt's call signature.
- :func:`write_malicious_pickle`: a ``torch.save`` file that runs code when unpickled.

The diffusers/transformers imports happen inside the SD builders, so importing this module needs
only torch (the ``diffusion`` extra is needed only to call them).

The global torch RNG of the caller is left untouched: weights are drawn inside
``torch.random.fork_rng``.
"""

from __future__ import annotations

import json
import pathlib
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = [
    "CLIP_MAX_LENGTH",
    "SmoothLama",
    "TinyLama",
    "build_smooth_lama",
    "build_tiny_lama",
    "build_tiny_sd_inpaint",
    "build_tiny_sdxl_inpaint",
    "write_clip_tokenizer_files",
    "write_malicious_pickle",
    "write_maskaware_checkpoint",
]

#: Token length of the tiny tokenizers (the real CLIP one's).
CLIP_MAX_LENGTH = 77

# A few byte-level BPE merges so the tokenizer really merges (the real CLIP file has ~49k).
_MERGES = [
    ("t", "h"),
    ("th", "e</w>"),
    ("a", "n"),
    ("i", "n"),
    ("e", "r"),
    ("o", "n</w>"),
    ("s", "h"),
    ("e", "l"),
]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (256 entries)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def write_clip_tokenizer_files(folder: Path) -> Path:
    """Write a byte-level CLIP BPE tokenizer as ``vocab.json`` + ``merges.txt`` into ``folder``.

    The vocabulary is the real CLIP layout in miniature: the 256 byte characters, their ``</w>``
    (end of word) forms, the tokens made by :data:`_MERGES`, then ``<|startoftext|>`` and
    ``<|endoftext|>`` (522 tokens). Load it with ``CLIPTokenizer.from_pretrained(folder)``; building
    ``CLIPTokenizer(vocab_file=..., merges_file=...)`` directly gives an empty vocabulary under
    transformers 5.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + [a + b for a, b in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate tokens in the tiny CLIP vocabulary"
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    return folder


def _tiny_clip_tokenizer(folder: Path):
    """A loaded tiny CLIP tokenizer (asserts its vocabulary really loaded)."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=CLIP_MAX_LENGTH)
    assert len(tokenizer) > 500, f"tiny CLIP tokenizer loaded {len(tokenizer)} tokens"
    ids = tokenizer("the shelf")["input_ids"]
    assert tokenizer.unk_token_id not in ids[1:-1], f"tiny CLIP tokenizer fell back to unk: {ids}"
    return tokenizer


def _clip_text_config(tokenizer, *, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    # 2 levels: vae_scale_factor 2, so a 64x64 image has 32x32 latents.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        force_upcast=False,
    )


def _save_pipeline(pipe, folder: Path) -> Path:
    pipe.save_pretrained(str(folder), safe_serialization=True)
    pickled = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.bin"))
    pickled += sorted(str(p.relative_to(folder)) for p in folder.rglob("*.pt*"))
    assert not pickled, f"save_pretrained wrote pickle files: {pickled}"
    assert list(folder.rglob("*.safetensors")), "save_pretrained wrote no safetensors"
    return folder


def build_tiny_sd_inpaint(folder: Path, *, seed: int = 0) -> Path:
    """Build a tiny Stable Diffusion inpainting pipeline and save it to ``folder``.

    Parts: ``UNet2DConditionModel`` (in_channels 9 = 4 latent + 1 mask + 4 masked-image latent,
    blocks (32, 64), cross_attention_dim 32, sample_size 32), a 2-level ``AutoencoderKL``
    (vae_scale_factor 2), a 2-layer ``CLIPTextModel`` (hidden 32) with a byte-level CLIP tokenizer,
    and a ``DDIMScheduler``; no safety checker or feature extractor.

    Saved with ``save_pretrained(folder, safe_serialization=True)`` (safetensors only; asserted), so
    ``AutoPipelineForInpainting.from_pretrained(folder, local_files_only=True,
    use_safetensors=True, safety_checker=None, requires_safety_checker=False)`` reloads it as a
    ``StableDiffusionInpaintPipeline``. Pass ``height`` and ``width`` when calling it: the default
    output size is sample_size x vae_scale_factor = 64.

    The same ``seed`` gives the same weights (bit for bit); the caller's torch RNG is not touched.
    Returns ``folder``.
    """
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_clip_tokenizer(folder / "_tokenizer_src")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=9,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(_clip_text_config(tokenizer))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    _save_pipeline(pipe, folder)
    _remove_tree(folder / "_tokenizer_src")
    return folder


def build_tiny_sdxl_inpaint(folder: Path, *, seed: int = 0) -> Path:
    """Build a tiny Stable Diffusion XL inpainting pipeline and save it to ``folder``.

    Parts: a ``CLIPTextModel`` and a ``CLIPTextModelWithProjection`` (hidden 32, projection 32) with
    one byte-level CLIP tokenizer each; a ``UNet2DConditionModel`` with in_channels 9,
    cross_attention_dim 64 (the two encoders' hidden states side by side),
    ``addition_embed_type="text_time"``, ``addition_time_embed_dim=8`` and
    ``projection_class_embeddings_input_dim = 6*8 + 32`` (original size, crop, target size time
    ids plus the pooled projection; ``requires_aesthetics_score=False``); a 2-level
    ``AutoencoderKL`` with ``force_upcast=False``; an ``EulerDiscreteScheduler`` with
    ``steps_offset=1``; ``add_watermarker=False``.

    Saved safetensors-only like :func:`build_tiny_sd_inpaint`;
    ``AutoPipelineForInpainting.from_pretrained`` reloads it as a
    ``StableDiffusionXLInpaintPipeline``. Same ``seed`` -> same weights. Returns ``folder``.
    """
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_clip_tokenizer(folder / "_tokenizer_src")
    tokenizer_2 = _tiny_clip_tokenizer(folder / "_tokenizer_src")
    time_embed_dim = 8
    projection_dim = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=9,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 1),
            cross_attention_dim=64,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=6 * time_embed_dim + projection_dim,
            norm_num_groups=32,
        )
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(_clip_text_config(tokenizer, projection_dim=projection_dim))
        text_encoder_2 = CLIPTextModelWithProjection(
            _clip_text_config(tokenizer_2, projection_dim=projection_dim)
        )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    _save_pipeline(pipe, folder)
    _remove_tree(folder / "_tokenizer_src")
    return folder


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def build_tiny_lama(path: Path, *, seed: int = 0) -> Path:
    """Write a small TorchScript stand-in for LaMa's ``big-lama.pt`` to ``path``.

    Signature (as IOPaint calls the real one): ``forward(image, mask)`` with ``image`` float32
    ``[1, 3, H, W]`` in [0, 1] and ``mask`` int64 ``[1, 1, H, W]`` in {0, 1} (1 = hole); returns
    float32 ``[1, 3, H, W]`` in [0, 1]. Like the exported LaMa it predicts from
    ``cat(image * (1 - mask), mask)`` through a down-sampling encoder (3 stride-2 convolutions, so
    H and W must be multiples of 8: otherwise it raises ``torch.jit.Error``, whose message names ``builtins.ValueError``), a
    global Fourier block (``rfft2`` -> 1x1 conv on real/imag -> ``irfft2``) and a decoder, then
    returns ``mask * prediction + (1 - mask) * image``: pixels outside the hole come back unchanged.

    ~6.6 k parameters; the same ``seed`` gives the same weights and outputs, but not the same file
    bytes: ``torch.jit.save`` writes a random ``.data/serialization_id`` (and the archive records the
    file's stem), so pin the sha256 of the file as built, never a constant.
    Saved with ``torch.jit.save``; load with ``torch.jit.load(path, map_location="cpu")``.
    Returns ``path``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = TinyLama()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


class _FourierUnit(torch.nn.Module):
    """LaMa's global block in miniature: a 1x1 conv in the frequency domain."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2 * channels, 2 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        spectrum = torch.fft.rfft2(x, norm="ortho")
        stacked = torch.cat([spectrum.real, spectrum.imag], dim=1)
        stacked = F.relu(self.conv(stacked))
        real, imag = stacked.chunk(2, dim=1)
        return torch.fft.irfft2(torch.complex(real, imag), s=[height, width], norm="ortho")


class TinyLama(torch.nn.Module):
    """The module :func:`build_tiny_lama` scripts. Defined at module level: a class defined anew
    per call would be scripted under a new mangled name (``___torch_mangle_N``) each time."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(4, width, 3, padding=1)
        self.down = nn.ModuleList(
            [nn.Conv2d(width, width, 3, stride=2, padding=1) for _ in range(3)]
        )
        self.fourier = _FourierUnit(width)
        self.local = nn.Conv2d(width, width, 3, padding=1)
        self.up = nn.ModuleList([nn.Conv2d(2 * width, width, 3, padding=1) for _ in range(3)])
        self.head = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2], image.shape[-1]
        if height % 8 != 0 or width % 8 != 0:
            raise ValueError("TinyLama: image height and width must be multiples of 8 (pad first)")
        hole = mask.to(image.dtype)
        x = F.relu(self.stem(torch.cat([image * (1.0 - hole), hole], dim=1)))
        skips: list[torch.Tensor] = []
        for down in self.down:
            skips.append(x)
            x = F.relu(down(x))
        x = x + self.fourier(x) + F.relu(self.local(x))
        for i, up in enumerate(self.up):
            skip = skips[len(skips) - 1 - i]
            x = F.interpolate(x, size=[skip.shape[-2], skip.shape[-1]], mode="nearest")
            x = F.relu(up(torch.cat([x, skip], dim=1)))
        predicted = torch.sigmoid(self.head(x))
        return hole * predicted + (1.0 - hole) * image


class _TouchOnUnpickle:
    """Unpickling this object calls ``pathlib.Path.touch(sentinel)``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = Path(sentinel)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.sentinel,))


def write_malicious_pickle(path: Path, sentinel: Path) -> Path:
    """``torch.save`` to ``path`` a checkpoint whose unpickling creates the file ``sentinel``.

    The payload sits next to a real tensor (``{"weight": tensor, "payload": ...}``), like a
    checkpoint someone tampered with. ``torch.load(path, weights_only=False)`` creates
    ``sentinel``; ``torch.load(path, weights_only=True)`` raises ``UnpicklingError`` without
    creating it. A loader that refuses the file must leave ``sentinel`` absent. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(2, 2), "payload": _TouchOnUnpickle(sentinel)}, str(path))
    return path


class SmoothLama(torch.nn.Module):
    """LaMa's call signature around a non-learned fill: normalised box blurs at growing scales.

    Each hole pixel takes the mean of the known pixels in the smallest window (3 to 243 px)
    that holds any, so fills move toward the real picture; tests use it where a contract asks
    that a fill be plausible, which random weights are not.
    """

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if image.shape[2] % 8 != 0 or image.shape[3] % 8 != 0:
            raise ValueError("image height and width must be multiples of 8")
        valid = 1.0 - mask.to(image.dtype)
        out = image * valid
        todo = 1.0 - valid
        for size in [3, 9, 27, 81, 243]:
            den = F.avg_pool2d(valid, size, 1, size // 2, count_include_pad=False)
            num = F.avg_pool2d(image * valid, size, 1, size // 2, count_include_pad=False)
            reach = (den > 1e-6).to(image.dtype) * todo
            out = out + reach * num / den.clamp(min=1e-6)
            todo = todo * (1.0 - reach)
        return out + todo * 0.5


def build_smooth_lama(path: Path) -> Path:
    """Save :class:`SmoothLama` as TorchScript (no weights: the fill is the same every time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(SmoothLama()), str(path))
    return path


def write_maskaware_checkpoint(
    path: Path, *, seed: int = 0, resolution: int = 64, **shape: int
) -> Path:
    """A random-weight ``maskaware`` checkpoint in the format `pipeline train` writes.

    ``shape`` overrides MaskAwareConfig sizes; the default here is tiny (fast, not useful).
    """
    from safetensors.torch import save_file

    from inpaint_ops.inpainters.maskaware import (
        CONFIG_KEY,
        FORMAT,
        FORMAT_KEY,
        RESOLUTION_KEY,
    )
    from inpaint_ops.inpainters.maskaware_net import MaskAwareConfig, MaskAwareNet

    sizes = {"channels": 8, "dim": 32, "depth": 2, "heads": 2, "style_dim": 16, **shape}
    config = MaskAwareConfig(**sizes)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = MaskAwareNet(config)
    meta = {
        FORMAT_KEY: FORMAT,
        CONFIG_KEY: json.dumps(config.to_dict()),
        RESOLUTION_KEY: str(resolution),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path), metadata=meta)
    return path
