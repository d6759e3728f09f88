"""Load a model folder, every file checked first: the embedded Fashion-MNIST DDPM, a UNet folder or DDPM pipeline
folder (pixel UNet, unconditional or class-conditional), or a Stable Diffusion 1.x/2.x pipeline folder (unet/,
vae/, text_encoder/ + tokenizer/, scheduler/). Safetensors only unless pickles are allowed; nothing downloads."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel

from adaptive_sampler.errors import FieldError, FileFieldError, validation_parts
from adaptive_sampler.model_adapter import Conditioning, ModelAdapter, RowSpec, network_dtype
from adaptive_sampler.schedules.artifact import read_json_object

if TYPE_CHECKING:
    from adaptive_sampler.pipeline import BoundConditions, Conditions, LatentDecoder, TextEncoder

_CLASSES = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
_SAFE = "diffusion_pytorch_model.safetensors"
_PICKLED = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.pt")
_TEXT_SAFE = "model.safetensors"
_TEXT_PICKLED = ("pytorch_model.bin",)
EMBEDDED_T2I = "embedded-t2i"


def embedded_model_dir() -> Path:
    """The shipped Fashion-MNIST DDPM (diffusers folder layout); see its MODEL_CARD.md."""
    return Path(__file__).parent / "embedded" / "unet"


def embedded_t2i_dir() -> Path:
    """Where the embedded text-to-image model (a Stable Diffusion-layout folder) ships, once it is trained."""
    return Path(__file__).parent / "embedded" / "t2i"


@dataclass
class LoadedModel:
    """A network with the scheduler config it was trained with, its identity, and for latent or conditional
    models the parts around it: the VAE `decoder` (samples are latents of `sample_shape`, decoded to
    `image_shape`), the `text_encoder` (+ tokenizer), the class count. `conditions` are the prompts or labels it
    is sampled with, bound by `with_conditions` (None: unconditional)."""

    network: torch.nn.Module
    scheduler_config: dict[str, Any]
    name: str
    weights_sha256: str
    sample_shape: tuple[int, int, int]
    decoder: LatentDecoder | None = None
    text_encoder: TextEncoder | None = None
    num_classes: int | None = None
    conditions: BoundConditions | None = None

    def adapter(self, network_rows: RowSpec = "auto", cuda_graphs: bool = False) -> ModelAdapter:
        """The adapter of `network` (row policy `network_rows`, default fixed:8 on CPU and buckets on CUDA; see
        ModelAdapter)."""
        return ModelAdapter.from_diffusers(self.network, self.scheduler_config, network_rows=network_rows,
                                           cuda_graphs=cuda_graphs)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape of a sample as an image: the decoded shape of a latent model, else `sample_shape`."""
        return self.sample_shape if self.decoder is None else self.decoder.image_shape(self.sample_shape)

    @property
    def conditioning(self) -> Conditioning | None:
        """The network inputs of the bound conditions (sample i takes its own row), or None."""
        return None if self.conditions is None else self.conditions.conditioning

    def decode(self, samples: torch.Tensor, rows: int = 8) -> torch.Tensor:
        """Samples as images in [-1, 1]: latents through the VAE (in fixed chunks of `rows` rows, so an image does
        not depend on its batch); a pixel model's samples unchanged."""
        return samples if self.decoder is None else self.decoder(samples, rows)

    def with_conditions(self, conditions: Conditions) -> LoadedModel:
        """This model bound to `conditions` (checked against it; each distinct prompt encoded once)."""
        return replace(self, conditions=conditions.bind(self))


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


def _model_path(spec: str | Path) -> Path:
    if str(spec) == "embedded":
        return embedded_model_dir()
    if str(spec) == EMBEDDED_T2I:
        path = embedded_t2i_dir()
        if not path.is_dir():
            raise FieldError("model", EMBEDDED_T2I, f"is not installed here: {path} does not exist (the embedded "
                             "text-to-image model ships there once it is trained); give a Stable Diffusion folder")
        return path
    path = Path(spec)
    if not path.is_dir():
        raise FieldError("model", str(spec), f"is not 'embedded', {EMBEDDED_T2I!r} or a diffusers model folder")
    return path


def _weights(folder: Path, spec: str, allow_pickle: bool, safe: str, pickled_names: tuple[str, ...]) -> Path:
    """The weights file of a component folder: `safe` (safetensors), or a pickled one only with `allow_pickle`."""
    weights = folder / safe
    if weights.is_file():
        return weights
    pickled = next((folder / p for p in pickled_names if (folder / p).is_file()), None)
    if pickled is None:
        raise FieldError("model", spec, f"has no {safe} in {folder}")
    if not allow_pickle:
        raise FieldError(
            "model", spec, f"has {pickled}, a pickled checkpoint, which can run arbitrary code when loaded; "
            "convert it to safetensors, or pass --allow-pickle if you trust its source"
        )
    return pickled


def load_model(spec: str | Path, *, allow_pickle: bool = False, device: str | torch.device = "cpu",
               height: int | None = None, width: int | None = None,
               dtype: str | torch.dtype = "float32") -> LoadedModel:
    """Load `embedded`, `embedded-t2i` or a diffusers folder: a UNet folder or DDPM pipeline folder
    (UNet2DModel, optionally class-conditional through `num_class_embeds`, or UNet2DConditionModel, plus a
    scheduler config), or a Stable Diffusion 1.x/2.x pipeline folder (unet/, vae/ AutoencoderKL, text_encoder/
    CLIPTextModel + tokenizer/ CLIPTokenizer, scheduler/). A latent model samples latents; `height`/`width` are
    its image size in pixels (default: the UNet's sample size times the VAE's downsampling), or a pixel model's
    sample size (default: the UNet's).

    Weights must be safetensors: pickled `.bin`/`.pt` files can run code when loaded and are refused unless
    `allow_pickle` is set. Raises FieldError naming `model` for anything missing or unsupported, and a
    `FileFieldError` naming `model`, the file and the field inside it for a bad file (corrupt or truncated weights,
    a config that is not a JSON object, channels that do not match the weights or the other components, an unknown
    β schedule, …); all of it, in every sub-folder, is checked before any weights are loaded into a network.
    Nothing is downloaded (local files only). `dtype` (float32, float16 or bfloat16) is the denoising network's
    weights; the VAE, the text encoder and the sampler's state stay float32.
    """
    from adaptive_sampler.pipeline import LatentDecoder

    weights_dtype = network_dtype(dtype)
    path = _model_path(spec)
    shown = str(spec)
    unet_dir, scheduler_file = _locate(path)
    config_file = unet_dir / "config.json"
    if not config_file.is_file() or not scheduler_file.is_file():
        raise FieldError(
            "model", shown, f"lacks {config_file.name if not config_file.is_file() else scheduler_file}; "
            "a model folder needs config.json, the weights and scheduler_config.json (or unet/ and scheduler/)"
        )
    config = read_json_object(config_file, "model", str(config_file), "a diffusers UNet config")
    class_name = config.get("_class_name")
    if not isinstance(class_name, str) or class_name not in _CLASSES:
        raise FileFieldError("model", str(config_file), f"is not one of {', '.join(_CLASSES)}", "_class_name",
                             class_name)
    weights = _weights(unet_dir, shown, allow_pickle, _SAFE, _PICKLED)
    scheduler_config = _scheduler_config(scheduler_file)
    _check_unet_config(config, config_file, _shapes(weights), weights)
    num_classes = _num_classes(config, config_file)
    vae_dir, text_dir, tokenizer_dir = path / "vae", path / "text_encoder", path / "tokenizer"
    latent = unet_dir != path and vae_dir.is_dir()
    if unet_dir != path and text_dir.is_dir() != tokenizer_dir.is_dir():
        missing = tokenizer_dir if text_dir.is_dir() else text_dir
        raise FieldError("model", shown, f"lacks {missing}; a text-to-image folder needs text_encoder/ and "
                         "tokenizer/ together")
    text = unet_dir != path and text_dir.is_dir()
    if text and class_name != "UNet2DConditionModel":
        raise FileFieldError("model", str(config_file), "is not UNet2DConditionModel, which a folder with a text "
                             "encoder needs (cross-attention on the prompt)", "_class_name", class_name)
    vae_parts = _check_vae(vae_dir, shown, allow_pickle, config) if latent else None
    text_parts = _check_text_encoder(text_dir, tokenizer_dir, shown, allow_pickle, config) if text else None
    factor = 1 if vae_parts is None else 2 ** (len(vae_parts[1].get("block_out_channels", [64])) - 1)
    sample_size = _sample_size(config, factor, height, width)

    torch_device = resolve_device(device)
    network = _load_diffusers(_CLASSES[class_name], unet_dir, weights, config_file.name, torch_device, weights_dtype)
    decoder = text_encoder = None
    if vae_parts is not None:
        vae_weights, vae_config = vae_parts
        vae = _load_diffusers(AutoencoderKL, vae_dir, vae_weights, "vae/config.json", torch_device)
        decoder = LatentDecoder(vae, factor)
    if text_parts is not None:
        text_encoder = _load_text_encoder(text_dir, *text_parts, torch_device)
    digests = [_sha256(weights)]
    if vae_parts is not None:
        digests.append("vae:" + _sha256(vae_parts[0]))
    if text_parts is not None:
        digests += ["text_encoder:" + _sha256(text_parts[0])] + [
            f"tokenizer/{f.name}:" + _sha256(f) for f in sorted(tokenizer_dir.iterdir()) if f.is_file()]
    # a pixel model keeps the hash of its one weights file (its studies and caches stay valid)
    digest = digests[0] if len(digests) == 1 else hashlib.sha256("\n".join(digests).encode()).hexdigest()
    name = {"embedded": "fashion-mnist", EMBEDDED_T2I: EMBEDDED_T2I}.get(shown, path.resolve().name)
    return LoadedModel(
        network=network, scheduler_config=scheduler_config, name=name, weights_sha256=digest,
        sample_shape=(network.config.in_channels, *sample_size), decoder=decoder, text_encoder=text_encoder,
        num_classes=num_classes,
    )


def _load_diffusers(cls: Any, folder: Path, weights: Path, shown: str, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> Any:
    try:
        network = cls.from_pretrained(folder, use_safetensors=weights.suffix == ".safetensors",
                                      low_cpu_mem_usage=False, local_files_only=True, torch_dtype=dtype)
    except (OSError, RuntimeError, ValueError, TypeError, KeyError, AttributeError, NotImplementedError) as exc:
        raise FileFieldError("model", str(weights), f"cannot be loaded into the {cls.__name__} of {shown} "
                             f"({_first_line(exc)})") from None
    return network.to(device).eval().requires_grad_(False)


def _load_text_encoder(text_dir: Path, weights: Path, tokenizer: Any, device: torch.device) -> TextEncoder:
    from transformers import CLIPTextModel
    from transformers.utils import logging

    from adaptive_sampler.pipeline import TextEncoder

    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # no "Loading weights" bar per command
    try:
        encoder: Any = CLIPTextModel.from_pretrained(text_dir, use_safetensors=weights.suffix == ".safetensors",
                                                local_files_only=True)
    except (OSError, RuntimeError, ValueError, TypeError, KeyError, AttributeError, NotImplementedError) as exc:
        raise FileFieldError("model", str(weights), f"cannot be loaded into the CLIPTextModel of "
                             f"text_encoder/config.json ({_first_line(exc)})") from None
    finally:
        if bars:
            logging.enable_progress_bar()
    return TextEncoder(tokenizer, encoder.to(device).eval().requires_grad_(False))


# --- checks of a model folder's files, before anything is loaded --------------------------------------------------
_MAX_TRAIN_TIMESTEPS = 100_000
_LOAD_ERRORS = (RuntimeError, ValueError, TypeError, KeyError, AttributeError, IndexError, NotImplementedError)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = next((x for x in lines if "size mismatch" in x), lines[0] if lines else type(exc).__name__)
    return line if len(line) <= 300 else line[:297] + "…"


def _shapes(weights: Path) -> dict[str, tuple[int, ...]] | None:
    return _safetensors_shapes(weights) if weights.suffix == ".safetensors" else None


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


def _check_skeleton(build: Callable[[], torch.nn.Module], what: str, where: str,
                    shapes: dict[str, tuple[int, ...]] | None, weights: Path) -> None:
    """The network a config describes (built on the meta device: nothing is allocated) has the weights' shapes."""
    if shapes is None:
        return
    try:
        with torch.device("meta"):
            skeleton = build()
    except _LOAD_ERRORS as exc:
        raise FileFieldError("model", where, f"does not describe a {what} ({_first_line(exc)})") from None
    for key, tensor in skeleton.state_dict().items():
        if key in shapes and tuple(tensor.shape) != shapes[key]:
            raise FileFieldError("model", where, f"describes a network whose {key} has shape {tuple(tensor.shape)}, "
                                 f"but {weights.name} holds {shapes[key]}; the config does not match the weights")


def _check_unet_config(config: dict[str, Any], config_file: Path, shapes: dict[str, tuple[int, ...]] | None,
                       weights: Path) -> None:
    """The UNet config's channels and sample size are sane and match the weights (safetensors header), and the
    network it describes has the weights' tensor shapes."""
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
    cls = _CLASSES[config["_class_name"]]
    _check_skeleton(lambda: cls.from_config({k: v for k, v in config.items() if not k.startswith("_")}),
                    cls.__name__, where, shapes, weights)
    if config.get("in_channels", 4) != config.get("out_channels", 4):  # after the weights checks, which name more
        raise FileFieldError("model", where, f"differs from in_channels {config.get('in_channels', 4)}; the "
                             "sampler needs a prediction (ε, v or x̂0) of the sample's own shape", "out_channels",
                             config.get("out_channels", 4))


def _num_classes(config: dict[str, Any], config_file: Path) -> int | None:
    """The label count of a class-conditional UNet2DModel (`num_class_embeds`, a label embedding), else None."""
    count = config.get("num_class_embeds")
    if config["_class_name"] != "UNet2DModel" or count is None:
        return None
    if not _positive_int(count):
        raise FileFieldError("model", str(config_file), "is not a positive integer", "num_class_embeds", count)
    if config.get("class_embed_type") is not None:
        raise FileFieldError("model", str(config_file), "is not supported: class labels are taken as indices into "
                             "a label embedding (class_embed_type null, num_class_embeds set)", "class_embed_type",
                             config["class_embed_type"])
    return int(count)


def _sample_size(config: dict[str, Any], factor: int, height: int | None, width: int | None) -> tuple[int, int]:
    """(h, w) of a sample: the UNet's sample size, or `height`/`width` pixels divided by the VAE's `factor`; each
    must be a multiple of the UNet's total downsampling."""
    size = config["sample_size"]
    default = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    multiple = factor * 2 ** max(len(config.get("down_block_types", ())) - 1, 0)
    out = []
    for field, value, fallback in (("height", height, default[0]), ("width", width, default[1])):
        if value is None:
            out.append(fallback)
            continue
        if not _positive_int(value) or value % multiple:
            raise FieldError(field, value, f"is not a positive multiple of {multiple} (the downsampling of this "
                             "model's " + ("VAE and " if factor > 1 else "") + "UNet)")
        out.append(value // factor)
    return out[0], out[1]


def _config_of(folder: Path, spec: str, what: str) -> tuple[Path, dict[str, Any]]:
    file = folder / "config.json"
    if not file.is_file():
        raise FieldError("model", spec, f"lacks {file}; {folder.name}/ needs config.json and its weights")
    return file, read_json_object(file, "model", str(file), what)


def _check_vae(folder: Path, spec: str, allow_pickle: bool, unet: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """vae/: an AutoencoderKL whose latent channels are the UNet's input channels and whose scaling factor is a
    positive number; its weights match its config. Returns (weights, config)."""
    file, config = _config_of(folder, spec, "a diffusers AutoencoderKL config")
    where = str(file)
    if config.get("_class_name") != "AutoencoderKL":
        raise FileFieldError("model", where, "is not AutoencoderKL", "_class_name", config.get("_class_name"))
    for key in ("in_channels", "out_channels", "latent_channels"):
        if key in config and not _positive_int(config[key]):
            raise FileFieldError("model", where, "is not a positive integer", key, config[key])
    latent = config.get("latent_channels", 4)
    if latent != unet.get("in_channels", 4):
        raise FileFieldError("model", where, f"does not match unet/config.json in_channels "
                             f"{unet.get('in_channels', 4)}; the UNet denoises the VAE's latents", "latent_channels",
                             latent)
    blocks = config.get("block_out_channels", [64])
    if not isinstance(blocks, list) or not blocks or not all(_positive_int(b) for b in blocks):
        raise FileFieldError("model", where, "is not a non-empty list of positive integers", "block_out_channels",
                             blocks)
    for key, required in (("scaling_factor", True), ("shift_factor", False)):
        value = config.get(key, 0.18215 if required else None)
        if value is None and not required:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or (
                required and value <= 0):
            rule = "is not a positive number" if required else "is not a number or null"
            raise FileFieldError("model", where, rule, key, value)
    weights = _weights(folder, spec, allow_pickle, _SAFE, _PICKLED)
    _check_skeleton(lambda: AutoencoderKL.from_config({k: v for k, v in config.items() if not k.startswith("_")}),
                    "AutoencoderKL", where, _shapes(weights), weights)
    return weights, config


def _check_text_encoder(text_dir: Path, tokenizer_dir: Path, spec: str, allow_pickle: bool,
                        unet: dict[str, Any]) -> tuple[Path, Any]:
    """text_encoder/ + tokenizer/: a CLIPTextModel whose width is the UNet's cross-attention width and whose
    weights match its config, and a CLIPTokenizer (vocab.json + merges.txt, or tokenizer.json) whose tokens and
    length fit the encoder. Returns (weights, tokenizer)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    file, config = _config_of(text_dir, spec, "a transformers CLIPTextModel config")
    where = str(file)
    kind = config.get("model_type")
    if kind != "clip_text_model":
        raise FileFieldError("model", where, "is not a CLIP text model (model_type clip_text_model)", "model_type",
                             kind)
    for key in ("hidden_size", "vocab_size", "max_position_embeddings", "num_hidden_layers", "num_attention_heads"):
        if key in config and not _positive_int(config[key]):
            raise FileFieldError("model", where, "is not a positive integer", key, config[key])
    try:
        text_config = CLIPTextConfig.from_dict(config)
    except _LOAD_ERRORS as exc:
        raise FileFieldError("model", where, f"is not a CLIPTextConfig ({_first_line(exc)})") from None
    cross = unet.get("cross_attention_dim", 1280)
    if text_config.hidden_size != cross:
        raise FileFieldError("model", where, f"does not match unet/config.json cross_attention_dim {cross}; the "
                             "UNet attends to the text encoder's hidden states", "hidden_size",
                             text_config.hidden_size)
    weights = _weights(text_dir, spec, allow_pickle, _TEXT_SAFE, _TEXT_PICKLED)
    _check_skeleton(lambda: CLIPTextModel(text_config), "CLIPTextModel", where, _shapes(weights), weights)
    has_bpe = (tokenizer_dir / "vocab.json").is_file() and (tokenizer_dir / "merges.txt").is_file()
    if not has_bpe and not (tokenizer_dir / "tokenizer.json").is_file():
        raise FieldError("model", spec, f"lacks {tokenizer_dir / 'vocab.json'} and merges.txt (or tokenizer.json); "
                         "a CLIP tokenizer needs them")
    for name in ("vocab.json", "tokenizer_config.json", "tokenizer.json"):
        if (tokenizer_dir / name).is_file():
            read_json_object(tokenizer_dir / name, "model", str(tokenizer_dir / name), "a CLIP tokenizer file")
    try:
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except (OSError, *_LOAD_ERRORS) as exc:
        raise FileFieldError("model", str(tokenizer_dir), f"is not a CLIP tokenizer ({_first_line(exc)})") from None
    if len(tokenizer) > text_config.vocab_size:
        raise FileFieldError("model", where, f"is below the tokenizer's {len(tokenizer)} tokens "
                             f"({tokenizer_dir.name}/)", "vocab_size", text_config.vocab_size)
    length = tokenizer.model_max_length
    if not _positive_int(length) or length > text_config.max_position_embeddings:
        raise FileFieldError("model", str(tokenizer_dir / "tokenizer_config.json"), "is not a positive length within "
                             f"the text encoder's max_position_embeddings {text_config.max_position_embeddings}",
                             "model_max_length", length)
    return weights, tokenizer


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
