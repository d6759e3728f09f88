"""Turn a denoising network (diffusers UNet or any callable) into ε̂ and x̂0 at given timesteps."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace
from typing import Any, Literal

import torch
from diffusers import DDIMScheduler
from pydantic import BaseModel, ConfigDict, Field

from adaptive_sampler.cuda_graphs import CudaGraphs
from adaptive_sampler.errors import FieldError
from adaptive_sampler.guidance import GuidanceInterval
from adaptive_sampler.noise_schedule import NoiseSchedule

PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")


def eps_and_x0(output: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor,
               prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε̂, x̂0), x̂0 unclipped, from a network `output` at x_t = sqrt(ᾱ)·x0 + sqrt(1 - ᾱ)·ε (ᾱ broadcast against x)
    for an epsilon, v_prediction (Salimans & Ho 2022) or sample (x0) `prediction_type`."""
    if prediction_type == "epsilon":
        return output, (x - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return (alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * x,
                alpha_bar.sqrt() * x - (1 - alpha_bar).sqrt() * output)
    if prediction_type == "sample":
        return (x - alpha_bar.sqrt() * output) / (1 - alpha_bar).sqrt(), output
    raise FieldError("prediction_type", prediction_type, f"is not one of {', '.join(map(repr, PREDICTION_TYPES))}")


class X0Processing(BaseModel):
    """Optional clipping or dynamic thresholding of x̂0, with diffusers' names and meaning.

    Dynamic thresholding follows Saharia et al. 2022 (Imagen, arXiv:2205.11487): per sample, s is the
    `dynamic_thresholding_ratio` quantile of |x̂0|, clamped to [1, sample_max_value]; x̂0 is clipped to [-s, s] / s.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    clip_sample: bool = False
    clip_sample_range: float = Field(1.0, gt=0)
    thresholding: bool = False
    dynamic_thresholding_ratio: float = Field(0.995, gt=0, lt=1)
    sample_max_value: float = Field(1.0, ge=1)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> X0Processing:
        """The x̂0 processing of a diffusers scheduler config (its other keys are ignored)."""
        return cls(**{k: config[k] for k in cls.model_fields if k in config})

    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        if self.thresholding:  # diffusers' own code, which reads these fields as its config
            return DDIMScheduler._threshold_sample(SimpleNamespace(config=self), x0)
        if self.clip_sample:
            return x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        return x0


@dataclass(frozen=True)
class Conditioning:
    """Extra network inputs per sample (e.g. `encoder_hidden_states` [n or 1, L, D]) and classifier-free guidance.

    With `uncond` set and guidance_scale ≠ 1, the network runs on unconditional and conditional rows and the output
    is uncond + guidance_scale · (cond - uncond) (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance").
    A `guidance_interval` limits guidance to the rows whose t lies in it (Kynkäänniemi et al. 2024); the other rows
    run conditional alone, and their unconditional rows never reach the network (one evaluation instead of two).
    """

    cond: dict[str, torch.Tensor] = field(default_factory=dict)
    uncond: dict[str, torch.Tensor] | None = None
    guidance_scale: float = 1.0
    guidance_interval: GuidanceInterval | None = field(default=None, kw_only=True)

    @property
    def guided(self) -> bool:
        """Whether guidance is on: an unconditional branch and a scale ≠ 1."""
        return self.uncond is not None and self.guidance_scale != 1.0

    def select(self, indices: torch.Tensor) -> Conditioning:
        """The rows of `indices` (tensors with a single row broadcast to all samples)."""

        def take(kwargs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: (v.expand(len(indices), *v.shape[1:]) if v.shape[0] == 1 else v[indices.to(v.device)])
                    for k, v in kwargs.items()}

        return Conditioning(take(self.cond), None if self.uncond is None else take(self.uncond), self.guidance_scale,
                            guidance_interval=self.guidance_interval)


@dataclass(frozen=True)
class Prediction:
    """The denoiser's two views of the clean image: ε̂ (noise) and x̂0 (after x0 processing), and what each row
    cost: `evals`, the rows it sent through the network (2 where guided: conditional + unconditional; else 1), an
    int for every row alike or a tensor per row."""

    eps: torch.Tensor
    x0: torch.Tensor
    evals: torch.Tensor | int = 1

    def nonfinite_rows(self) -> torch.Tensor:
        """A bool per row: True where ε̂ or x̂0 holds a NaN or Inf."""
        return ~(torch.isfinite(self.eps).flatten(1).all(1) & torch.isfinite(self.x0).flatten(1).all(1))


def tensor_output(out: Any) -> torch.Tensor:
    """The output tensor of a network call: a tensor, a diffusers output's `.sample` or a tuple's first item."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    return out[0]


def _unwrapped_call(network: Callable[..., Any], x: torch.Tensor, t: torch.Tensor, **kwargs: torch.Tensor
                    ) -> torch.Tensor:
    return tensor_output(network(x, t, **kwargs))


def required_inputs(network: Callable[..., Any]) -> tuple[str, ...]:
    """The inputs that `network(x, t, **inputs)` cannot run without: the parameters after (x, t) without a default
    (a UNet2DConditionModel's `encoder_hidden_states`), and `class_labels` of a class-conditional diffusers UNet."""
    try:
        params = list(inspect.signature(getattr(network, "forward", network)).parameters.values())[2:]
    except (TypeError, ValueError):  # no signature to read (a builtin, a C extension)
        params = []
    names = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if getattr(getattr(network, "config", None), "num_class_embeds", None) is not None:
        names.append("class_labels")
    return tuple(names)


def _pad(rows: torch.Tensor, count: int) -> torch.Tensor:
    """`rows` padded to `count` rows by repeating its last row."""
    return torch.cat([rows, rows[-1:].expand(count - len(rows), *rows.shape[1:])])


# The network's weights in half precision; the sampler's state stays float32 (ModelAdapter.dtype).
NETWORK_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16,
                                          "bfloat16": torch.bfloat16}


def network_dtype(name: str | torch.dtype) -> torch.dtype:
    """The torch dtype of `name` (float32, float16 or bfloat16, or that dtype); else FieldError naming `dtype`."""
    if isinstance(name, torch.dtype) and name in NETWORK_DTYPES.values():
        return name
    if isinstance(name, str) and name in NETWORK_DTYPES:
        return NETWORK_DTYPES[name]
    raise FieldError("dtype", str(name), f"is not one of {', '.join(NETWORK_DTYPES)}")


ROW_SPECS = "a positive integer (fixed:N) or None (all), or one of auto, all, buckets[:MIN], fixed:N"


@dataclass(frozen=True)
class NetworkCall:
    """One network call: the rows [start, start + real) padded to `rows` rows (by repeating the last one)."""

    start: int
    real: int
    rows: int


@dataclass(frozen=True)
class RowPolicy:
    """How the active rows are cut into network calls.

    - `fixed` (`size` = N): chunks of exactly N rows, the last one padded. A row's output then never depends on how
      many rows share its batch: CPU conv kernels pick their algorithm by batch size (results move by ~1e-6) but
      never mix rows. The CPU default (N = 8; about 4 % slower than one call there).
    - `buckets` (`size` = the smallest bucket): one call on the rows padded to the next power of two ≥ `size`, at
      most the batch's own rows (`capacity`). A row's output depends only on its bucket, and rows that leave the
      batch still shrink the call. The CUDA default: one launch per step instead of batch/8.
    - `all`: one call on the rows as they are (no padding; not batch-size invariant).
    """

    kind: Literal["fixed", "buckets", "all"]
    size: int = 8

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "buckets", "all"):
            raise FieldError("network_rows", self.kind, f"is not a row policy; use {ROW_SPECS}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise FieldError("network_rows", f"{self.kind}:{self.size}", "must have a positive integer size")

    @classmethod
    def parse(cls, spec: RowSpec, device: torch.device) -> RowPolicy:
        """The row policy of `spec`: `auto` (buckets on a CUDA `device`, else fixed:8), `all`, `buckets[:MIN]`,
        `fixed:N`, an integer N (fixed:N), None (all) or a RowPolicy; else FieldError naming `network_rows`."""
        if isinstance(spec, RowPolicy):
            return spec
        if spec is None:
            return cls("all")
        if isinstance(spec, int) and not isinstance(spec, bool):
            if spec < 1:
                raise FieldError("network_rows", spec, f"must be {ROW_SPECS}")
            return cls("fixed", spec)
        if spec == "auto":
            return cls("buckets") if device.type == "cuda" else cls("fixed")
        kind, sep, size = spec.partition(":") if isinstance(spec, str) else ("", "", "")
        if kind == "all" and not sep:
            return cls("all")
        if kind in ("fixed", "buckets") and (sep or kind == "buckets"):
            if not sep:
                return cls("buckets")
            if size.isdigit() and int(size) > 0:
                return cls(kind, int(size))  # type: ignore[arg-type]
        raise FieldError("network_rows", spec, f"is not a row policy; use {ROW_SPECS}")

    def __str__(self) -> str:
        return self.kind if self.kind == "all" else f"{self.kind}:{self.size}"

    def bucket(self, rows: int, capacity: int | None = None) -> int:
        """The row count of a `buckets` call over `rows` rows: the next power of two ≥ max(rows, size), at most
        `capacity` (the rows of the whole batch, when known) but never fewer than `rows`."""
        bucket = max(self.size, 1 << (rows - 1).bit_length())
        return bucket if capacity is None else max(rows, min(bucket, capacity))

    def calls(self, rows: int, capacity: int | None = None) -> list[NetworkCall]:
        """The network calls over `rows` active rows of a batch of `capacity` rows."""
        if rows == 0:
            return []
        if self.kind == "all":
            return [NetworkCall(0, rows, rows)]
        if self.kind == "buckets":
            return [NetworkCall(0, rows, self.bucket(rows, capacity))]
        return [NetworkCall(start, min(self.size, rows - start), self.size) for start in range(0, rows, self.size)]


RowSpec = RowPolicy | str | int | None


MAX_NETWORK_ROWS = 4096  # far above any real call, low enough that a typo cannot allocate terabytes


def row_spec_from_text(text: str | int) -> str | int | None:
    """A command line's row policy, checked (sizes up to MAX_NETWORK_ROWS): an integer N (0 = all rows, else
    fixed:N) or a `RowPolicy.parse` spec; a bad one raises FieldError naming `network_rows`."""
    value = str(text).strip()
    if value.lstrip("+-").isdigit():
        rows = int(value)
        if not 0 <= rows <= MAX_NETWORK_ROWS:
            raise FieldError("network_rows", rows, f"is outside [0, {MAX_NETWORK_ROWS}] (rows per network call; 0 = "
                                                   "all rows)")
        return rows or None
    policy = RowPolicy.parse(value, torch.device("cpu"))
    if policy.size > MAX_NETWORK_ROWS:
        raise FieldError("network_rows", value, f"has a size above {MAX_NETWORK_ROWS}")
    return value


class ModelAdapter:
    """Calls the network and converts its output (ε, v or x0 prediction) into a `Prediction`.

    `network_rows` picks the `RowPolicy` of every network call: `auto` (the default) is `fixed:8` on CPU (and any
    non-CUDA device), which keeps a sample bitwise the same whatever batch it runs in, and `buckets` on CUDA, which
    runs one call per step on the rows padded to a power of two. An integer N (= fixed:N), None (= all) or a spec
    string overrides it on any device. `cuda_graphs` replays one CUDA graph per call shape (CUDA only, with fixed
    rows or buckets). A half-precision network gets its inputs in its dtype; ε̂, x̂0 and the sampler stay float32.
    """

    def __init__(
        self,
        network: Callable[..., Any],
        schedule: NoiseSchedule,
        *,
        prediction_type: PredictionType = "epsilon",
        x0_processing: X0Processing | None = None,
        network_rows: RowSpec = "auto",
        cuda_graphs: bool = False,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise FieldError("prediction_type", prediction_type,
                             f"is not one of {', '.join(map(repr, PREDICTION_TYPES))}")
        self.network = network
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.x0_processing = x0_processing or X0Processing()
        params = next(network.parameters(), None) if isinstance(network, torch.nn.Module) else None
        self.device = params.device if params is not None else torch.device("cpu")
        self.network_dtype = params.dtype if params is not None else torch.float32
        self.dtype = torch.promote_types(self.network_dtype, torch.float32)
        self.row_policy = RowPolicy.parse(network_rows, self.device)
        self.required_inputs = required_inputs(network)
        self._graphs: CudaGraphs | None = None
        if cuda_graphs:
            if self.device.type != "cuda":
                raise FieldError("cuda_graphs", cuda_graphs, f"needs a network on a CUDA device; this one is on "
                                 f"{self.device.type}")
            if self.row_policy.kind == "all":
                raise FieldError("cuda_graphs", cuda_graphs, "needs fixed call shapes: use network_rows='buckets' "
                                 "or 'fixed:N', not 'all'")
            self._graphs = CudaGraphs(partial(_unwrapped_call, network))

    @classmethod
    def from_diffusers(
        cls, network: Callable[..., Any], scheduler_config: Mapping[str, Any], *, network_rows: RowSpec = "auto",
        cuda_graphs: bool = False,
    ) -> ModelAdapter:
        """Adapter for a network trained with a diffusers scheduler config.

        Args:
            network: the denoising network, called as network(x, t, **conditioning).
            scheduler_config: its β schedule, prediction type and x̂0 clipping or thresholding.
            network_rows: the row policy (see the class docstring).
            cuda_graphs: replay one CUDA graph per call shape.
        """
        return cls(
            network,
            NoiseSchedule.from_config(scheduler_config),
            prediction_type=scheduler_config.get("prediction_type", "epsilon"),
            x0_processing=X0Processing.from_config(scheduler_config),
            network_rows=network_rows,
            cuda_graphs=cuda_graphs,
        )

    def check_conditioning(self, conditioning: Conditioning | None) -> None:
        """Raise FieldError naming `conditioning` if it lacks an input the network needs (`required_inputs`), e.g.
        the prompts of a text-to-image UNet, and say how a loaded model gives it."""
        given = set() if conditioning is None else set(conditioning.cond)
        interval = None if conditioning is None else conditioning.guidance_interval
        if conditioning is not None and interval is not None:
            if not isinstance(interval, GuidanceInterval):
                raise FieldError("guidance_interval", interval, "is not a GuidanceInterval; pass "
                                 "GuidanceInterval(high=700, low=200) or GuidanceInterval.parse('700:200')")
            if not conditioning.guided:
                why = "no unconditional branch (uncond)" if conditioning.uncond is None else "guidance_scale 1"
                raise FieldError("guidance_interval", str(interval), f"needs classifier-free guidance, but the "
                                 f"conditioning has {why}; give uncond and a guidance_scale other than 1, or drop it")
            interval.check(self.schedule.num_train_timesteps)
        missing = [name for name in self.required_inputs if name not in given]
        if missing:
            what = "labels=(0, 3)" if missing == ["class_labels"] else "prompts=('a photo of a sneaker',)"
            raise FieldError("conditioning", None if conditioning is None else sorted(given), (
                f"lacks {', '.join(missing)}, which the network ({type(self.network).__name__}) needs; bind the "
                f"loaded model to conditions and pass its conditioning: model = model.with_conditions(Conditions("
                f"{what})), then sample(model.adapter(), ..., conditioning=model.conditioning)"))

    def _call(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = x.to(self.network_dtype)
        kwargs = {k: v.to(self.network_dtype) if v.is_floating_point() else v for k, v in kwargs.items()}
        out = self._graphs(x, t, kwargs) if self._graphs is not None else tensor_output(self.network(x, t, **kwargs))
        return out.to(self.dtype)

    def network_output(self, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, torch.Tensor],
                       capacity: int | None = None) -> torch.Tensor:
        """Raw network output for rows x at per-row timesteps t, in the calls of the row policy (`capacity`: the
        rows of the whole batch, which caps a bucket)."""
        outputs = []
        for call in self.row_policy.calls(x.shape[0], capacity):
            part = slice(call.start, call.start + call.real)
            xs, ts, ks = x[part], t[part], {k: v[part] for k, v in kwargs.items()}
            if call.rows > call.real:
                xs, ts, ks = _pad(xs, call.rows), _pad(ts, call.rows), {k: _pad(v, call.rows) for k, v in ks.items()}
            outputs.append(self._call(xs, ts, ks)[:call.real])
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, conditioning: Conditioning | None = None, *,
                 capacity: int | None = None) -> Prediction:
        """Predict ε̂ and x̂0 for x [rows, ...] at per-row integer timesteps t [rows]; `capacity` is the row count of
        the batch these rows belong to (the sampler passes it; it bounds the `buckets` policy's padding)."""
        evals: torch.Tensor | int = 1
        if conditioning is None or not conditioning.guided:
            out = self.network_output(x, t, conditioning.cond if conditioning is not None else {}, capacity)
        else:
            out, evals = self._guided_output(x, t, conditioning, capacity)
        a = self.schedule.alpha_bar(t).to(self.dtype).view(-1, *([1] * (x.ndim - 1)))
        eps, x0 = eps_and_x0(out, x, a, self.prediction_type)
        # as in diffusers, ε̂ stays the unclipped model's: clipping only changes x̂0
        return Prediction(eps=eps, x0=self.x0_processing(x0), evals=evals)

    def _guided_output(self, x: torch.Tensor, t: torch.Tensor, conditioning: Conditioning, capacity: int | None
                       ) -> tuple[torch.Tensor, torch.Tensor | int]:
        """Classifier-free guidance: one pass of the row policy over the unconditional rows of the guided rows (all
        rows without an interval; with one, the rows whose t lies in it), then every conditional row; and per row,
        the evaluations it cost. A guided row's output is the same arithmetic in any batch."""
        uncond, scale = conditioning.uncond or {}, conditioning.guidance_scale
        inside = None if conditioning.guidance_interval is None else conditioning.guidance_interval.covers(t)
        rows = None if inside is None else inside.nonzero().flatten()  # one host sync per step, with an interval
        if rows is not None and len(rows) == 0:  # no row guided: the conditional rows alone
            return self.network_output(x, t, conditioning.cond, capacity), 1
        if rows is not None and len(rows) < len(x):
            x_u, t_u, uncond = x[rows], t[rows], {k: v[rows.to(v.device)] for k, v in uncond.items()}
        else:
            x_u, t_u, rows = x, t, None
        both = {k: torch.cat([uncond[k], v]) for k, v in conditioning.cond.items()}
        out = self.network_output(torch.cat([x_u, x]), torch.cat([t_u, t]), both,
                                  None if capacity is None else 2 * capacity)
        out_uncond, out_cond = out[:len(x_u)], out[len(x_u):]
        if rows is None or inside is None:  # every row guided
            return out_uncond + scale * (out_cond - out_uncond), 2
        guided = out_uncond + scale * (out_cond[rows] - out_uncond)
        return out_cond.index_copy(0, rows, guided), 1 + inside.long()
