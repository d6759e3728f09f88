"""Load a denoising network: the embedded Fashion-MNIST DDPM or a diffusers model folder (safetensors)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from adaptive_sampler.errors import FieldError
from adaptive_sampler.model_adapter import ModelAdapter

_CLASSES = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
_SAFE = "diffusion_pytorch_model.safetensors"
_PICKLED = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.pt")


def embedded_model_dir() -> Path:
    """The shipped Fashion-MNIST DDPM (diffusers folder layout); see its MODEL_CARD.md."""
    return Path(__file__).parent / "embedded" / "unet"


@dataclass
class LoadedModel:
    """A network with the scheduler config it was trained with, and its identity."""

    network: torch.nn.Module
    scheduler_config: dict[str, Any]
    name: str
    weights_sha256: str
    sample_shape: tuple[int, int, int]

    def adapter(self, network_rows: int | None = 8) -> ModelAdapter:
        return ModelAdapter.from_diffusers(self.network, self.scheduler_config, network_rows=network_rows)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _locate(path: Path) -> tuple[Path, Path]:
    """(unet folder, scheduler config file) of a UNet folder or a full pipeline folder."""
    if (path / "unet").is_dir():
        return path / "unet", path / "scheduler" / "scheduler_config.json"
    return path, path / "scheduler_config.json"


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` (CUDA when available, else CPU) or any torch device name; a bad name raises FieldError naming `device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise FieldError("device", str(name), "is not a torch device (auto, cpu, cuda, cuda:1, …)") from None


def load_model(spec: str | Path, *, allow_pickle: bool = False, device: str | torch.device = "cpu") -> LoadedModel:
    """Load `embedded` or a diffusers folder (UNet2DModel/UNet2DConditionModel plus a scheduler config).

    Weights must be safetensors: pickled `.bin`/`.pt` files can run code when loaded and are refused unless
    `allow_pickle` is set. Raises FieldError naming `model` for anything missing or unsupported.
    """
    path = embedded_model_dir() if str(spec) == "embedded" else Path(spec)
    if not path.is_dir():
        raise FieldError("model", str(spec), "is not 'embedded' or a diffusers model folder")
    unet_dir, scheduler_file = _locate(path)
    config_file = unet_dir / "config.json"
    if not config_file.is_file() or not scheduler_file.is_file():
        raise FieldError(
            "model", str(spec), f"lacks {config_file.name if not config_file.is_file() else scheduler_file}; "
            "a model folder needs config.json, the weights and scheduler_config.json (or unet/ and scheduler/)"
        )
    class_name = json.loads(config_file.read_text()).get("_class_name")
    if class_name not in _CLASSES:
        raise FieldError("model", str(spec), f"has class {class_name!r} in {config_file}, which is not one of "
                         f"{', '.join(_CLASSES)}")
    weights = unet_dir / _SAFE
    use_safetensors = weights.is_file()
    if not use_safetensors:
        pickled = next((unet_dir / p for p in _PICKLED if (unet_dir / p).is_file()), None)
        if pickled is None:
            raise FieldError("model", str(spec), f"has no {_SAFE} in {unet_dir}")
        if not allow_pickle:
            raise FieldError(
                "model", str(spec), f"has {pickled}, a pickled checkpoint, which can run arbitrary code when loaded; "
                "convert it to safetensors, or pass --allow-pickle if you trust its source"
            )
        weights = pickled
    network = _CLASSES[class_name].from_pretrained(unet_dir, use_safetensors=use_safetensors, low_cpu_mem_usage=False)
    network = network.to(resolve_device(device)).eval().requires_grad_(False)
    size = network.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return LoadedModel(
        network=network,
        scheduler_config=dict(json.loads(scheduler_file.read_text())),
        name="fashion-mnist" if str(spec) == "embedded" else path.resolve().name,
        weights_sha256=_sha256(weights),
        sample_shape=(network.config.in_channels, height, width),
    )
