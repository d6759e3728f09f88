"""A loaded model (`LoadedModel`, what `models.load_model` returns), the parts around its network (`TextEncoder`,
`LatentDecoder`), and the user's `Conditions`, checked against the model and bound to it once: sample i takes
prompt i mod P (label i mod L), whatever batch it is drawn in.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.guidance import GuidanceInterval
from adaptive_sampler.model_adapter import Conditioning, ModelAdapter, RowSpec

DEFAULT_TEXT_GUIDANCE = 7.5  # StableDiffusionPipeline's default


@dataclass
class LoadedModel:
    """A network with the scheduler config it was trained with, its identity, and for latent or conditional
    models the parts around it: the VAE `decoder` (samples are latents of `sample_shape`, decoded to
    `image_shape`), the `text_encoder` (+ tokenizer), the class count, the `recommended_guidance` of a text-to-image
    model (None: DEFAULT_TEXT_GUIDANCE). `conditions` are the prompts or labels it is sampled with, bound by
    `with_conditions` (None: unconditional)."""

    network: torch.nn.Module
    scheduler_config: dict[str, Any]
    name: str
    weights_sha256: str
    sample_shape: tuple[int, int, int]
    decoder: LatentDecoder | None = None
    text_encoder: TextEncoder | None = None
    num_classes: int | None = None
    conditions: BoundConditions | None = None
    recommended_guidance: float | None = None

    def adapter(self, network_rows: RowSpec = "auto", cuda_graphs: bool = False) -> ModelAdapter:
        """The adapter of `network` with row policy `network_rows` (see ModelAdapter), optionally on CUDA graphs."""
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
        """Samples [n, C, h, w] as images in [-1, 1]: latents through the VAE in fixed chunks of `rows` (an image
        does not depend on its batch), a pixel model's samples unchanged."""
        return samples if self.decoder is None else self.decoder(samples, rows)

    def with_conditions(self, conditions: Conditions) -> LoadedModel:
        """This model bound to `conditions` (checked against it; each distinct prompt encoded once)."""
        return replace(self, conditions=conditions.bind(self))


class TextEncoder:
    """A CLIP tokenizer and text encoder (transformers), on the UNet's device."""

    def __init__(self, tokenizer: Any, encoder: torch.nn.Module) -> None:
        self.tokenizer, self.encoder = tokenizer, encoder

    @torch.inference_mode()
    def encode(self, prompts: Sequence[str], dtype: torch.dtype | None = None) -> torch.Tensor:
        """`encoder_hidden_states` [len(prompts), L, D], one encoder call per distinct prompt (alone, so a prompt's
        encoding does not depend on the others), in `dtype` (default: the encoder's)."""
        param = next(self.encoder.parameters())
        distinct = list(dict.fromkeys(prompts))
        states = {}
        for prompt in distinct:
            ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(param.device)
            states[prompt] = self.encoder(ids)[0][0]
        return torch.stack([states[p] for p in prompts]).to(dtype or param.dtype)


class LatentDecoder:
    """A diffusers AutoencoderKL that turns latents into images; `factor` is its spatial downsampling."""

    def __init__(self, vae: Any, factor: int) -> None:
        self.vae, self.factor = vae, factor
        self.scaling_factor = float(vae.config.scaling_factor)
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = 0.0 if shift is None else float(shift)

    def image_shape(self, latent_shape: Sequence[int]) -> tuple[int, int, int]:
        """The (C, H, W) of the image that latents of `latent_shape` (..., h, w) decode to."""
        return (int(self.vae.config.out_channels), int(latent_shape[-2]) * self.factor,
                int(latent_shape[-1]) * self.factor)

    @torch.inference_mode()
    def __call__(self, latents: torch.Tensor, rows: int = 8) -> torch.Tensor:
        """Images [n, C, H, W] float32 in [-1, 1] on the latents' device, decoded in chunks of exactly `rows` rows
        (the last one padded), as the model adapter calls the UNet: CPU kernels differ by batch size."""
        param = next(self.vae.parameters())
        out = []
        for start in range(0, len(latents), rows):
            chunk = latents[start:start + rows]
            real = len(chunk)
            if real < rows:
                chunk = torch.cat([chunk, chunk[-1:].expand(rows - real, *chunk.shape[1:])])
            z = chunk.to(device=param.device, dtype=param.dtype) / self.scaling_factor + self.shift_factor
            out.append(self.vae.decode(z).sample[:real].float().clamp(-1, 1).to(latents.device))
        if not out:
            return torch.zeros((0, *self.image_shape(latents.shape)), device=latents.device)
        return torch.cat(out)


@dataclass(frozen=True)
class RowConditioning(Conditioning):
    """Conditioning whose tensors hold one row per distinct condition: sample i takes row index[i mod len(index)]
    (a tensor of a single row serves every sample). Nothing is copied per sample until a batch selects it."""

    index: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.int64))

    def select(self, indices: torch.Tensor) -> Conditioning:
        return super().select(self.index[indices.cpu() % len(self.index)])


def read_prompts(path: str | Path) -> tuple[str, ...]:
    """The prompts of a UTF-8 text file, one per line (blank lines skipped); FieldError naming `prompts` if it is
    missing, unreadable, not a regular file or holds none."""
    if Path(path).exists() and not Path(path).is_dir() and not Path(path).is_file():  # a FIFO would wait for a writer
        raise FieldError("prompts", str(path), "is not a regular file (a FIFO, socket or device); give a text file "
                         "with one prompt per line")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError) as e:
        whys: dict[type, str] = {FileNotFoundError: "does not exist", IsADirectoryError: "is a folder"}
        why = whys.get(type(e), "is not UTF-8 text")
        raise FieldError("prompts", str(path), f"{why}; give a text file with one prompt per line") from None
    except OSError as exc:
        raise FieldError("prompts", str(path), f"cannot be read ({exc.strerror or exc})") from None
    prompts = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not prompts:
        raise FieldError("prompts", str(path), "holds no prompt; write one prompt per line")
    return prompts


def parse_labels(text: str) -> tuple[int, ...]:
    """--class-labels `0,3,7` as (0, 3, 7); FieldError naming `class_labels` if it is not a list of integers."""
    items = [v.strip() for v in text.split(",")]
    if not all(item.lstrip("-").isdigit() for item in items):
        raise FieldError("class_labels", text, "is not a comma-separated list of integers, e.g. 0,3,7")
    return tuple(int(v) for v in items)


@dataclass(frozen=True)
class Conditions:
    """What the samples are conditioned on, as the user gave it (the flags of the same names).

    `prompts` (sample i takes prompt i mod P) with an optional `negative_prompt` for the unconditional branch of
    classifier-free guidance (default: the empty prompt), or class `labels` (sample i takes label i mod L), or
    `all_classes` (label i mod the model's class count). `guidance_scale` >= 1 (None: the model's recommended
    guidance, 3 for embedded-t2i, 7.5 for other text-to-image models, 1 otherwise; 1 runs no unconditional branch).
    `guidance_interval` applies guidance only at the timesteps inside it (`GuidanceInterval(high=700, low=200)`;
    a text-to-image model with guidance only: a class-conditional UNet has no null class). A class-conditional
    model given nothing takes `all_classes`.
    """

    prompts: tuple[str, ...] | None = None
    negative_prompt: str | None = None
    labels: tuple[int, ...] | None = None
    all_classes: bool = False
    guidance_scale: float | None = None
    guidance_interval: GuidanceInterval | None = None

    @classmethod
    def from_flags(cls, *, prompt: str | None = None, prompts: str | Path | None = None,
                   negative_prompt: str | None = None, guidance_scale: float | None = None,
                   class_labels: str | None = None, classes: str | None = None,
                   guidance_interval: str | None = None) -> Conditions:
        """The conditions of the command-line flags, checked on their own (a missing or empty prompts file, two
        flags that exclude each other, labels that are not integers, guidance below 1 or NaN, an interval that is
        not HIGH:LOW): FieldError naming the flag.

        Args:
            prompt: --prompt, one prompt for every sample.
            prompts: --prompts, a file of prompts (`read_prompts`).
            negative_prompt: --negative-prompt, the unconditional branch's prompt.
            guidance_scale: --guidance-scale.
            class_labels: --class-labels, e.g. `0,3,7`.
            classes: --classes, `all` or None.
            guidance_interval: --guidance-interval, `HIGH:LOW` (e.g. `700:200`).
        """
        if prompt is not None and prompts is not None:
            raise FieldError("prompts", str(prompts), "is given together with --prompt; give one of them")
        if class_labels is not None and classes is not None:
            raise FieldError("classes", classes, "is given together with --class-labels; give one of them")
        if (prompt is not None or prompts is not None) and (class_labels is not None or classes is not None):
            flag, value = ("class_labels", class_labels) if class_labels is not None else ("classes", classes)
            raise FieldError(flag, value, "is given together with a prompt; a model takes prompts or class labels")
        if classes is not None and classes != "all":
            raise FieldError("classes", classes, "is not 'all'; give --classes all or --class-labels 0,3,7")
        if guidance_scale is not None and not (isinstance(guidance_scale, int | float) and guidance_scale >= 1
                                               and math.isfinite(guidance_scale)):
            raise FieldError("guidance_scale", guidance_scale, "is not a finite number >= 1 (1 = no guidance)")
        return cls(
            prompts=(prompt,) if prompt is not None else (read_prompts(prompts) if prompts is not None else None),
            negative_prompt=negative_prompt,
            labels=parse_labels(class_labels) if class_labels is not None else None,
            all_classes=classes == "all",
            guidance_scale=None if guidance_scale is None else float(guidance_scale),
            guidance_interval=None if guidance_interval is None else GuidanceInterval.parse(guidance_interval),
        )

    def _flag(self) -> tuple[str, Any]:
        """The flag and value that carry the conditions (for errors)."""
        if self.prompts is not None:
            return "prompt", self.prompts[0] if len(self.prompts) == 1 else f"{len(self.prompts)} prompts"
        if self.labels is not None:
            return "class_labels", ",".join(map(str, self.labels))
        return "classes", "all"

    def check(self, model: LoadedModel) -> None:
        """Raise FieldError naming the flag if these conditions do not fit `model`."""
        text, classes = model.text_encoder is not None, model.num_classes
        if self.prompts is not None and not text:
            raise FieldError("prompt", self._flag()[1], f"is given, but model {model.name!r} is not text-"
                             "conditional (it has no text_encoder/ and tokenizer/)")
        if text and self.prompts is None:
            raise FieldError("prompt", None, f"is missing: model {model.name!r} is a text-to-image model; give "
                             "--prompt TEXT or --prompts FILE (--prompt '' for unconditional samples)")
        if (self.labels is not None or self.all_classes) and classes is None:
            flag, value = self._flag()
            raise FieldError(flag, value, f"is given, but model {model.name!r} is not class-conditional (its UNet "
                             "has no num_class_embeds)")
        if self.labels is not None and classes is not None:
            bad = [v for v in self.labels if not 0 <= v < classes]
            if bad:
                raise FieldError("class_labels", ",".join(map(str, self.labels)), f"holds {bad[0]}, outside "
                                 f"[0, {classes - 1}] (the model's {classes} classes)")
        if not text and classes is None and model.network.__class__.__name__ == "UNet2DConditionModel":
            raise FieldError("model", model.name, "has a UNet2DConditionModel but no text_encoder/ and tokenizer/; "
                             "the command line samples it from a Stable Diffusion folder (or pass a Conditioning "
                             "with encoder_hidden_states from Python)")
        scale = self.guidance_scale
        if scale is not None and scale != 1 and not text:
            raise FieldError("guidance_scale", scale, "needs an unconditional branch, which only a text-to-image "
                             "model has (the empty or negative prompt); use 1 here")
        if self.guidance_interval is not None:
            interval = GuidanceInterval.from_value(self.guidance_interval)
            if not text:
                raise FieldError("guidance_interval", str(interval), "needs classifier-free guidance, which only a "
                                 f"text-to-image model has (the empty or negative prompt); model {model.name!r} has "
                                 "no unconditional branch (a class-conditional UNet has no null class, so guidance "
                                 "is out of scope there)")
            if self.resolved_guidance(model) == 1:
                raise FieldError("guidance_interval", str(interval), "has no effect without guidance: it says where "
                                 "--guidance-scale applies, and the scale is 1; give a scale above 1 or drop it")
            interval.check(int(model.scheduler_config.get("num_train_timesteps", 1000)))
        if self.negative_prompt is not None and (not text or self.resolved_guidance(model) == 1):
            raise FieldError("negative_prompt", self.negative_prompt, "has no effect without guidance: it is the "
                             "unconditional branch of a text-to-image model under --guidance-scale > 1")

    def resolved_guidance(self, model: LoadedModel) -> float:
        """The guidance scale for `model`: the given one, else the model's recommended one for a text-to-image model
        (`DEFAULT_TEXT_GUIDANCE` if it has none) and 1 otherwise."""
        if self.guidance_scale is not None:
            return self.guidance_scale
        if model.text_encoder is None:
            return 1.0
        return DEFAULT_TEXT_GUIDANCE if model.recommended_guidance is None else model.recommended_guidance

    def bind(self, model: LoadedModel) -> BoundConditions | None:
        """Check against `model` and build the network inputs once (None for an unconditional model)."""
        self.check(model)
        guidance = self.resolved_guidance(model)
        dtype = next(model.network.parameters()).dtype
        if model.text_encoder is not None and self.prompts is not None:
            distinct = list(dict.fromkeys(self.prompts))
            states = model.text_encoder.encode(distinct, dtype)
            index = torch.tensor([distinct.index(p) for p in self.prompts])
            uncond = None
            if guidance != 1:
                uncond = {"encoder_hidden_states": model.text_encoder.encode([self.negative_prompt or ""], dtype)}
            interval = None if self.guidance_interval is None else GuidanceInterval.from_value(self.guidance_interval)
            conditioning = RowConditioning({"encoder_hidden_states": states}, uncond, guidance, index,
                                           guidance_interval=interval)
            return BoundConditions(self.prompts, None, self.negative_prompt, guidance, conditioning, interval)
        if model.num_classes is not None:
            labels = self.labels if self.labels is not None else tuple(range(model.num_classes))
            device = next(model.network.parameters()).device
            tensor = torch.tensor(labels, dtype=torch.int64, device=device)
            conditioning = RowConditioning({"class_labels": tensor}, None, 1.0, torch.arange(len(labels)))
            return BoundConditions(None, labels, None, 1.0, conditioning)
        return None


@dataclass(frozen=True)
class BoundConditions:
    """Conditions built for one model: per-sample prompts or labels and the `conditioning` the sampler takes."""

    prompts: tuple[str, ...] | None
    labels: tuple[int, ...] | None
    negative_prompt: str | None
    guidance_scale: float
    conditioning: RowConditioning
    guidance_interval: GuidanceInterval | None = None

    def prompts_for(self, indices: Sequence[int]) -> list[str] | None:
        """The prompt of each sample index (i mod P), or None for a model without prompts."""
        return None if self.prompts is None else [self.prompts[i % len(self.prompts)] for i in indices]

    def labels_for(self, indices: Sequence[int]) -> list[int] | None:
        """The class label of each sample index (i mod L), or None for a model without labels."""
        return None if self.labels is None else [self.labels[i % len(self.labels)] for i in indices]

    def identity(self) -> dict[str, Any]:
        """What the samples depend on besides the model and the schedule (for study configs and cache keys)."""
        what: dict[str, Any] = {"prompts": self.prompts, "labels": self.labels, "negative_prompt":
                                self.negative_prompt, "guidance_scale": self.guidance_scale}
        interval: dict[str, Any] = {}  # only when given: identities from before the interval stay as they were
        if self.guidance_interval is not None:
            interval = {"guidance_interval": str(self.guidance_interval)}
        digest = hashlib.sha256(json.dumps({**what, **interval}, sort_keys=True).encode()).hexdigest()
        return {"prompts": None if self.prompts is None else len(self.prompts),
                "labels": None if self.labels is None else len(self.labels),
                "guidance_scale": self.guidance_scale, **interval, "sha256": digest}


__all__ = ["BoundConditions", "Conditions", "LatentDecoder", "LoadedModel", "RowConditioning", "TextEncoder",
           "parse_labels", "read_prompts"]
