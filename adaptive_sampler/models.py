"""Load a model folder: the embedded Fashion-MNIST DDPM, a UNet folder or DDPM pipeline folder (pixel UNet,
unconditional or class-conditional), or a Stable Diffusion 1.x/2.x pipeline folder (unet/, vae/, text_encoder/ +
tokenizer/, scheduler/). Safetensors only unless pickles are allowed; nothing downloads.

What diffusers, transformers and safetensors refuse becomes one FieldError naming `model` and the part's folder.
Checked here is only what they accept but the sampler cannot use: the config keys the sampler reads, parts that
must fit each other (latent channels, the prompt width, the tokenizer's length) and pickles.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from adaptive_sampler.errors import FieldError, FileFieldError, first_line, validation_parts
from adaptive_sampler.model_adapter import PredictionType, X0Processing, network_dtype
from adaptive_sampler.noise_schedule import NoiseSchedule
from adaptive_sampler.pipeline import LatentDecoder, LoadedModel, TextEncoder
from adaptive_sampler.schedules.artifact import read_json_object

EMBEDDED_T2I = "embedded-t2i"
_UNETS = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}
# the weights file of a part, and the pickled names it may have instead
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors",
                      ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.pt"))
_TEXT_WEIGHTS = ("model.safetensors", ("pytorch_model.bin",))
_Positive = Annotated[int, Field(gt=0, strict=True)]
_Schema = TypeVar("_Schema", bound=BaseModel)
_T = TypeVar("_T")


def _square(size: Any) -> Any:
    return (size, size) if isinstance(size, int) and not isinstance(size, bool) else size


class _UNetConfig(BaseModel):
    """The keys of a UNet config that the sampler reads; diffusers checks the rest when it builds the network."""

    model_config = ConfigDict(extra="allow")
    class_name: Literal["UNet2DModel", "UNet2DConditionModel"] = Field(alias="_class_name")
    sample_size: Annotated[tuple[_Positive, _Positive], BeforeValidator(_square)]  # (height, width)
    num_class_embeds: _Positive | None = None
    class_embed_type: Any = None


class _VaeConfig(BaseModel):
    """The keys of a VAE config that the sampler reads (diffusers' defaults where absent)."""

    model_config = ConfigDict(extra="allow")
    class_name: Literal["AutoencoderKL"] = Field(alias="_class_name")
    latent_channels: _Positive = 4
    scaling_factor: float = Field(0.18215, gt=0, allow_inf_nan=False, strict=True)
    shift_factor: float | None = Field(None, allow_inf_nan=False, strict=True)


class _SchedulerConfig(BaseModel):
    """The keys of a scheduler config that the noise schedule and the model adapter read (x̂0 processing's own
    bounds are `X0Processing`'s)."""

    model_config = ConfigDict(extra="allow", strict=True)
    num_train_timesteps: int = Field(ge=1, le=100_000)
    trained_betas: list[Annotated[float, Field(gt=0, lt=1)]] | None = None
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"] = "linear"
    beta_start: float = Field(0.0001, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    prediction_type: PredictionType = "epsilon"
    rescale_betas_zero_snr: bool = False
    clip_sample: bool = False
    thresholding: bool = False


def embedded_model_dir() -> Path:
    """The shipped Fashion-MNIST DDPM (diffusers folder layout); see its MODEL_CARD.md."""
    return Path(__file__).parent / "embedded" / "unet"


def embedded_t2i_dir() -> Path:
    """Where the embedded text-to-image model (a Stable Diffusion-layout folder) ships, once it is trained."""
    return Path(__file__).parent / "embedded" / "t2i"


# embedded-t2i's recommended guidance: its best FID at every solver and step count of its quality table
# (docs/results/quality.md, guidance 1, 3 and 7.5); other text-to-image folders get DEFAULT_TEXT_GUIDANCE
EMBEDDED_T2I_GUIDANCE = 3.0


def file_sha256(path: Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks.

    Args:
        path: the file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_DEVICES = "use auto, cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device of `name`, checked against this machine.

    A name that is not a torch device, or one that this machine cannot run the sampler on (`cuda` without CUDA,
    `cuda:N` beyond the device count, `mps` without MPS, `meta`, `xla`, ...), raises FieldError naming `device`.

    Args:
        name: `auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:N` or `mps`.
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


def _weights(folder: Path, spec: str, allow_pickle: bool, names: tuple[str, tuple[str, ...]]) -> Path:
    """The weights file of a part's folder: the safetensors one, or a pickled one only with `allow_pickle` (none:
    the safetensors name, for the library to report)."""
    safe, pickled_names = names
    pickled = next((folder / p for p in pickled_names if (folder / p).is_file()), None)
    if (folder / safe).is_file() or pickled is None:
        return folder / safe
    if not allow_pickle:
        raise FieldError("model", spec, f"has {pickled}, a pickled checkpoint, which can run arbitrary code when "
                         "loaded; convert it to safetensors, or pass --allow-pickle if you trust its source")
    return pickled


def _config(file: Path, schema: type[_Schema], what: str) -> _Schema:
    """A part's config file as `schema`; a value it refuses raises FileFieldError naming the file and the key."""
    raw = read_json_object(file, "model", str(file), what)
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        inner, value, rule = validation_parts(exc)
        raise FileFieldError("model", str(file), rule, inner, value) from None


def _library_load(load: Callable[[], _T], folder: Path, what: str) -> _T:
    """`load()`, with anything the library refuses as one FieldError naming `model` and `folder`."""
    try:
        return load()
    except Exception as exc:  # each library raises its own types (tokenizers: plain Exception)
        raise FieldError("model", str(folder), f"cannot be loaded as {what} ({first_line(exc)})") from None


def load_model(spec: str | Path, *, allow_pickle: bool = False, device: str | torch.device = "cpu",
               height: int | None = None, width: int | None = None,
               dtype: str | torch.dtype = "float32") -> LoadedModel:
    """Load a model folder (see the module docstring); nothing is downloaded.

    Raises FieldError naming `model` for a missing part, a pickled file without `allow_pickle` or a file the
    libraries refuse, and FileFieldError naming the file and its key for a config value the sampler cannot use.

    Args:
        spec: `embedded`, `embedded-t2i` or a diffusers folder (see the module docstring).
        allow_pickle: load pickled `.bin`/`.pt` weights, which can run code when loaded.
        device: where the parts run (see `resolve_device`).
        height: a latent model's image height in pixels (default: the UNet's sample size times the VAE's
            downsampling), or a pixel model's sample height (default: the UNet's).
        width: the same for the width.
        dtype: float32, float16 or bfloat16, the denoising network's weights; the VAE, the text encoder and the
            sampler's state stay float32.
    """
    weights_dtype = network_dtype(dtype)
    path, shown = _model_path(spec), str(spec)
    pipeline_folder = (path / "unet").is_dir()
    unet_dir = path / "unet" if pipeline_folder else path
    scheduler_config = _scheduler_config(path / "scheduler" / "scheduler_config.json" if pipeline_folder
                                         else path / "scheduler_config.json")
    unet_file = unet_dir / "config.json"
    config = _config(unet_file, _UNetConfig, "a diffusers UNet config")
    text_dir, tokenizer_dir, vae_dir = path / "text_encoder", path / "tokenizer", path / "vae"
    text = pipeline_folder and text_dir.is_dir()
    if pipeline_folder and text != tokenizer_dir.is_dir():
        raise FieldError("model", shown, f"lacks {tokenizer_dir if text else text_dir}; a text-to-image folder needs "
                         "text_encoder/ and tokenizer/ together")
    if text and config.class_name != "UNet2DConditionModel":
        raise FileFieldError("model", str(unet_file), "is not UNet2DConditionModel, which a folder with a text "
                             "encoder needs (cross-attention on the prompt)", "_class_name", config.class_name)
    num_classes = config.num_class_embeds if config.class_name == "UNet2DModel" else None
    if num_classes is not None and config.class_embed_type is not None:
        raise FileFieldError("model", str(unet_file), "is not supported: class labels are taken as indices into a "
                             "label embedding (class_embed_type null, num_class_embeds set)", "class_embed_type",
                             config.class_embed_type)

    torch_device = resolve_device(device)
    weights = _weights(unet_dir, shown, allow_pickle, _DIFFUSERS_WEIGHTS)
    network = _from_pretrained(_UNETS[config.class_name], unet_dir, weights, torch_device, weights_dtype)
    channels = network.config.in_channels
    if network.config.out_channels != channels:
        raise FileFieldError("model", str(unet_file), f"differs from in_channels {channels}; the sampler needs a "
                             "prediction (ε, v or x̂0) of the sample's own shape", "out_channels",
                             network.config.out_channels)
    digests = [file_sha256(weights)]
    decoder = text_encoder = None
    if pipeline_folder and vae_dir.is_dir():
        decoder, vae_weights = _load_vae(vae_dir, shown, allow_pickle, channels, torch_device)
        digests.append("vae:" + file_sha256(vae_weights))
    if text:
        text_encoder, text_weights = _load_text_encoder(text_dir, tokenizer_dir, shown, allow_pickle,
                                                        network.config.cross_attention_dim, torch_device)
        digests += ["text_encoder:" + file_sha256(text_weights)] + [
            f"tokenizer/{f.name}:" + file_sha256(f) for f in sorted(tokenizer_dir.iterdir()) if f.is_file()]
    # a pixel model keeps the hash of its one weights file (its studies and caches stay valid)
    digest = digests[0] if len(digests) == 1 else hashlib.sha256("\n".join(digests).encode()).hexdigest()
    sample_size = _sample_size(config.sample_size, len(network.config.down_block_types),
                               1 if decoder is None else decoder.factor, height, width)
    return LoadedModel(
        network=network, scheduler_config=scheduler_config, weights_sha256=digest,
        name={"embedded": "fashion-mnist", EMBEDDED_T2I: EMBEDDED_T2I}.get(shown, path.resolve().name),
        sample_shape=(channels, *sample_size), decoder=decoder, text_encoder=text_encoder, num_classes=num_classes,
        recommended_guidance=EMBEDDED_T2I_GUIDANCE if path.resolve() == embedded_t2i_dir().resolve() else None,
    )


def _from_pretrained(cls: Any, folder: Path, weights: Path, device: torch.device,
                     dtype: torch.dtype = torch.float32) -> Any:
    network = _library_load(lambda: cls.from_pretrained(
        folder, use_safetensors=weights.suffix == ".safetensors", low_cpu_mem_usage=False, local_files_only=True,
        torch_dtype=dtype), folder, cls.__name__)
    return network.to(device).eval().requires_grad_(False)


def _load_vae(folder: Path, spec: str, allow_pickle: bool, unet_channels: int,
              device: torch.device) -> tuple[LatentDecoder, Path]:
    """vae/: an AutoencoderKL whose latents are the UNet's samples. Returns (decoder, weights file)."""
    file = folder / "config.json"
    config = _config(file, _VaeConfig, "a diffusers AutoencoderKL config")
    if config.latent_channels != unet_channels:
        raise FileFieldError("model", str(file), f"does not match unet/config.json in_channels {unet_channels}; the "
                             "UNet denoises the VAE's latents", "latent_channels", config.latent_channels)
    weights = _weights(folder, spec, allow_pickle, _DIFFUSERS_WEIGHTS)
    vae = _from_pretrained(AutoencoderKL, folder, weights, device)
    return LatentDecoder(vae, 2 ** (len(vae.config.block_out_channels) - 1)), weights


def _load_text_encoder(text_dir: Path, tokenizer_dir: Path, spec: str, allow_pickle: bool,
                       cross_attention_dim: int, device: torch.device) -> tuple[TextEncoder, Path]:
    """text_encoder/ + tokenizer/: a CLIPTextModel as wide as the UNet's cross-attention, and a CLIPTokenizer whose
    tokens and length fit it. Returns (text encoder, weights file)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging

    file = text_dir / "config.json"
    raw = read_json_object(file, "model", str(file), "a transformers CLIPTextModel config")
    if raw.get("model_type") != "clip_text_model":
        raise FileFieldError("model", str(file), "is not a CLIP text model (model_type clip_text_model)",
                             "model_type", raw.get("model_type"))
    config = _library_load(lambda: CLIPTextConfig.from_dict(raw), text_dir, "a CLIPTextConfig")
    if config.hidden_size != cross_attention_dim:
        raise FileFieldError("model", str(file), f"does not match unet/config.json cross_attention_dim "
                             f"{cross_attention_dim}; the UNet attends to the text encoder's hidden states",
                             "hidden_size", config.hidden_size)
    if not any((tokenizer_dir / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        raise FieldError("model", spec, f"lacks {tokenizer_dir / 'vocab.json'} and merges.txt (or tokenizer.json); "
                         "a CLIP tokenizer needs them")
    tokenizer = _library_load(lambda: CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True),
                              tokenizer_dir, "a CLIPTokenizer")
    if len(tokenizer) > config.vocab_size:
        raise FileFieldError("model", str(file), f"is below the tokenizer's {len(tokenizer)} tokens "
                             f"({tokenizer_dir.name}/)", "vocab_size", config.vocab_size)
    if tokenizer.model_max_length > config.max_position_embeddings:
        raise FileFieldError("model", str(tokenizer_dir / "tokenizer_config.json"), "is not within the text "
                             f"encoder's max_position_embeddings {config.max_position_embeddings}",
                             "model_max_length", tokenizer.model_max_length)
    weights = _weights(text_dir, spec, allow_pickle, _TEXT_WEIGHTS)
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # no "Loading weights" bar per command
    try:
        encoder: Any = _library_load(lambda: CLIPTextModel.from_pretrained(
            text_dir, config=config, use_safetensors=weights.suffix == ".safetensors", local_files_only=True),
            text_dir, "a CLIPTextModel")
    finally:
        if bars:
            logging.enable_progress_bar()
    return TextEncoder(tokenizer, encoder.to(device).eval().requires_grad_(False)), weights


def _sample_size(default: tuple[int, int], down_blocks: int, factor: int, height: int | None,
                 width: int | None) -> tuple[int, int]:
    """(h, w) of a sample: the UNet's sample size, or `height`/`width` pixels divided by the VAE's `factor`; each
    must be a multiple of the UNet's total downsampling."""
    multiple = factor * 2 ** max(down_blocks - 1, 0)
    out = []
    for field, value, fallback in (("height", height, default[0]), ("width", width, default[1])):
        if value is None:
            out.append(fallback)
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % multiple:
            raise FieldError(field, value, f"is not a positive multiple of {multiple} (the downsampling of this "
                             "model's " + ("VAE and " if factor > 1 else "") + "UNet)")
        out.append(value // factor)
    return out[0], out[1]


def _scheduler_config(file: Path) -> dict[str, Any]:
    """The scheduler config, checked: the keys the sampler reads, and a noise schedule (diffusers' own code) whose
    ᾱ stays in (0, 1]; anything else raises FileFieldError naming the file."""
    where = str(file)
    config = read_json_object(file, "model", where, "a diffusers scheduler config")
    try:
        _SchedulerConfig.model_validate(config)
        X0Processing.from_config(config)
    except ValidationError as exc:
        inner, value, rule = validation_parts(exc)
        raise FileFieldError("model", where, rule, inner, value) from None
    steps, betas = config["num_train_timesteps"], config.get("trained_betas")
    if betas is not None and len(betas) != steps:
        raise FileFieldError("model", where, f"does not hold one β per training step ({steps})", "trained_betas", betas)
    try:
        alpha_bar = NoiseSchedule.from_config(config).alpha_bar(torch.arange(steps))
    except (ValueError, TypeError, RuntimeError, IndexError, NotImplementedError) as exc:
        raise FileFieldError("model", where, f"does not describe a noise schedule ({first_line(exc)})") from None
    if not bool(torch.isfinite(alpha_bar).all()) or not bool(((alpha_bar > 0) & (alpha_bar <= 1)).all()):
        raise FileFieldError("model", where, "describes a noise schedule whose ᾱ_t leaves (0, 1]; check beta_start, "
                             "beta_end and beta_schedule")
    return config


__all__ = ["EMBEDDED_T2I", "EMBEDDED_T2I_GUIDANCE", "LoadedModel", "embedded_model_dir", "embedded_t2i_dir",
           "file_sha256", "load_model", "resolve_device"]
