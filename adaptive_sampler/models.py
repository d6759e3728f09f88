"""Load a denoising network: the embedded Fashion-MNIST DDPM or a diffusers model folder (safetensors)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from adaptive_sampler.errors import FieldError, FileFieldError, validation_parts
from adaptive_sampler.model_adapter import ModelAdapter
from adaptive_sampler.schedules.artifact import read_json_object

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


_DEVICES = "use auto, cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device) -> torch.device:
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:N` or `mps`, checked against this machine.

    A name that is not a torch device, or one that this machine cannot run the sampler on (`cuda` without CUDA,
    `cuda:N` beyond the device count, `mps` without MPS, `meta`, `xla`, ...), raises FieldError naming `device`.
    """
    text = str(name)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise FieldError("device", text, f"is not a torch device; {_DEVICES}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FieldError("device", text, "is not available here: this machine has no usable CUDA device; use "
                                             "auto or cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise FieldError("device", text, f"is not available here: this machine has {count} CUDA device"
                                             f"{'s' if count != 1 else ''} (cuda:0 … cuda:{count - 1})")
        return device
    if device.type == "mps":
        if torch.backends.mps.is_available():
            return device
        raise FieldError("device", text, "is not available here: this machine has no MPS backend; use auto or cpu")
    raise FieldError("device", text, f"is not available here; the sampler does not run on {device.type!r} devices; "
                                     f"{_DEVICES}")


def load_model(spec: str | Path, *, allow_pickle: bool = False, device: str | torch.device = "cpu") -> LoadedModel:
    """Load `embedded` or a diffusers folder (UNet2DModel/UNet2DConditionModel plus a scheduler config).

    Weights must be safetensors: pickled `.bin`/`.pt` files can run code when loaded and are refused unless
    `allow_pickle` is set. Raises FieldError naming `model` for anything missing or unsupported, and a
    `FileFieldError` naming `model`, the file and the field inside it for a bad file (corrupt or truncated weights,
    a config that is not a JSON object, channels that do not match the weights, an unknown β schedule, …); all of
    it is checked before any weights are loaded into a network.
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
    config = read_json_object(config_file, "model", str(config_file), "a diffusers UNet config")
    class_name = config.get("_class_name")
    if not isinstance(class_name, str) or class_name not in _CLASSES:
        raise FileFieldError("model", str(config_file), f"is not one of {', '.join(_CLASSES)}", "_class_name",
                             class_name)
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
    scheduler_config = _scheduler_config(scheduler_file)
    shapes = _safetensors_shapes(weights) if use_safetensors else None
    _check_unet_config(config, config_file, shapes, weights)
    try:
        network = _CLASSES[class_name].from_pretrained(unet_dir, use_safetensors=use_safetensors,
                                                       low_cpu_mem_usage=False)
    except (OSError, RuntimeError, ValueError, TypeError, KeyError, AttributeError, NotImplementedError) as exc:
        raise FileFieldError("model", str(weights), f"cannot be loaded into the {class_name} of {config_file.name} "
                             f"({_first_line(exc)})") from None
    network = network.to(resolve_device(device)).eval().requires_grad_(False)
    size = network.config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return LoadedModel(
        network=network,
        scheduler_config=scheduler_config,
        name="fashion-mnist" if str(spec) == "embedded" else path.resolve().name,
        weights_sha256=_sha256(weights),
        sample_shape=(network.config.in_channels, height, width),
    )


# --- checks of a model folder's files, before anything is loaded --------------------------------------------------
_MAX_TRAIN_TIMESTEPS = 100_000


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = next((x for x in lines if "size mismatch" in x), lines[0] if lines else type(exc).__name__)
    return line if len(line) <= 300 else line[:297] + "…"


def _safetensors_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header; a corrupt, truncated or empty file raises FileFieldError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise FileFieldError("model", str(weights), f"is not a readable safetensors file ({_first_line(exc)}); "
                             "it may be truncated or corrupt") from None


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_unet_config(config: dict[str, Any], config_file: Path, shapes: dict[str, tuple[int, ...]] | None,
                       weights: Path) -> None:
    """The UNet config's channels and sample size are sane and match the weights (safetensors header), and the
    network it describes has the weights' tensor shapes (built on the meta device: nothing is allocated)."""
    where = str(config_file)
    for key, tensor, dim in (("in_channels", "conv_in.weight", 1), ("out_channels", "conv_out.weight", 0)):
        if key not in config:  # the class's default; the shape check below still compares it with the weights
            continue
        value = config[key]
        if not _positive_int(value):
            raise FileFieldError("model", where, "is not a positive integer", key, value)
        if shapes is not None and tensor in shapes and len(shapes[tensor]) > dim and shapes[tensor][dim] != value:
            raise FileFieldError("model", where, f"does not match the weights ({shapes[tensor][dim]}, the "
                                 f"{'input' if dim else 'output'} channels of {tensor} in {weights.name})", key, value)
    size = config.get("sample_size")
    if not (_positive_int(size) or (isinstance(size, list | tuple) and len(size) == 2
                                    and all(_positive_int(v) for v in size))):
        raise FileFieldError("model", where, "is not a positive integer or a [height, width] pair", "sample_size",
                             size)
    if shapes is None:
        return
    cls = _CLASSES[config["_class_name"]]
    try:
        with torch.device("meta"):
            skeleton = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError) as exc:
        raise FileFieldError("model", where, f"does not describe a {cls.__name__} ({_first_line(exc)})") from None
    for key, tensor in skeleton.state_dict().items():
        if key in shapes and tuple(tensor.shape) != shapes[key]:
            raise FileFieldError("model", where, f"describes a network whose {key} has shape {tuple(tensor.shape)}, "
                                 f"but {weights.name} holds {shapes[key]}; the config does not match the weights")


def _scheduler_config(file: Path) -> dict[str, Any]:
    """The scheduler config, checked: a JSON object whose training timesteps, β schedule, prediction type and x̂0
    processing build a noise schedule (diffusers' own code) with ᾱ in (0, 1]; anything else raises FileFieldError."""
    from pydantic import ValidationError

    from adaptive_sampler.model_adapter import PREDICTION_TYPES, X0Processing
    from adaptive_sampler.noise_schedule import NoiseSchedule

    where = str(file)
    config = read_json_object(file, "model", where, "a diffusers scheduler config")
    steps = config.get("num_train_timesteps")
    if not isinstance(steps, int) or not _positive_int(steps) or steps > _MAX_TRAIN_TIMESTEPS:
        raise FileFieldError("model", where, f"is not an integer in [1, {_MAX_TRAIN_TIMESTEPS}]",
                             "num_train_timesteps", steps)
    betas = config.get("trained_betas")
    if betas is not None:
        if not isinstance(betas, list) or len(betas) != steps or not all(
                isinstance(b, int | float) and not isinstance(b, bool) and 0 < b < 1 for b in betas):
            raise FileFieldError("model", where, f"is not a list of {steps} numbers in (0, 1)", "trained_betas",
                                 betas)
    else:
        schedule = config.get("beta_schedule")
        known = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
        if schedule not in known:
            raise FileFieldError("model", where, f"is not one of {', '.join(known)}", "beta_schedule", schedule)
        for key in ("beta_start", "beta_end"):
            value = config.get(key, 0.0001 if key == "beta_start" else 0.02)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1:
                raise FileFieldError("model", where, "is not a number in (0, 1)", key, value)
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise FileFieldError("model", where, f"is not one of {', '.join(PREDICTION_TYPES)}", "prediction_type",
                             prediction)
    for key in ("rescale_betas_zero_snr", "clip_sample", "thresholding"):
        if not isinstance(config.get(key, False), bool):
            raise FileFieldError("model", where, "is not true or false", key, config[key])
    try:
        X0Processing.from_config(config)
    except ValidationError as exc:
        inner, value, rule = validation_parts(exc)
        raise FileFieldError("model", where, rule, inner, value) from None
    try:
        alpha_bar = NoiseSchedule.from_config(config).alpha_bar(torch.arange(steps))
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as exc:
        raise FileFieldError("model", where, f"does not describe a noise schedule ({_first_line(exc)})") from None
    if not bool(torch.isfinite(alpha_bar).all()) or not bool(((alpha_bar > 0) & (alpha_bar <= 1)).all()):
        raise FileFieldError("model", where, "describes a noise schedule whose ᾱ_t leaves (0, 1]; check beta_start, "
                             "beta_end and beta_schedule")
    return dict(config)
