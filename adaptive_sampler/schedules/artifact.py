"""A tool-neutral, self-describing schedule file (JSON) and its exporters."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from adaptive_sampler.atomic_write import atomic_write_bytes
from adaptive_sampler.errors import FieldError, FileFieldError, validation_parts
from adaptive_sampler.guidance import GuidanceInterval
from adaptive_sampler.timesteps import check_timesteps, discretize, is_fractional

if TYPE_CHECKING:
    from adaptive_sampler.noise_schedule import NoiseSchedule


def read_json_object(path: str | Path, field: str, shown: str, what: str = "a JSON object") -> dict[str, Any]:
    """The JSON object in file `path`, which input `field` names (shown as `shown`); a missing, unreadable, empty,
    non-UTF-8 or non-JSON file, or JSON that is not an object, raises a `FileFieldError`."""
    _refuse_non_file(Path(path), field, shown, what)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileFieldError(field, shown, "does not exist") from None
    except OSError as exc:
        raise FileFieldError(field, shown, f"cannot be read ({exc.strerror or exc})") from None
    if not raw.strip():
        raise FileFieldError(field, shown, f"is empty; it should hold {what} (JSON)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileFieldError(field, shown, f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                             f"it should hold {what} (JSON)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileFieldError(field, shown, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                             f"it should hold {what}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits, or deep nesting
        raise FileFieldError(field, shown, f"is not JSON that can be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise FileFieldError(field, shown, f"holds a JSON {_json_kind(data)}, not {what} (a JSON object)")
    return data


def _refuse_non_file(path: Path, field: str, shown: str, what: str) -> None:
    """A FileFieldError for a folder, FIFO, socket or device at `path` (reading a FIFO would wait for a writer)."""
    if path.is_dir():
        raise FileFieldError(field, shown, f"is a folder, not a file holding {what}")
    if path.exists() and not path.is_file():
        raise FileFieldError(field, shown, f"is not a regular file (a FIFO, socket or device); it should hold {what}")


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


class ModelIdentity(BaseModel):
    """Which network a schedule was found for: a name and the SHA-256 of its weights file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class NoiseScheduleSpec(BaseModel):
    """The β schedule the timesteps refer to (diffusers config names), so σ exports need no model at hand."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    num_train_timesteps: int = Field(gt=0)
    beta_schedule: str
    beta_start: float = Field(gt=0)
    beta_end: float = Field(gt=0)
    rescale_betas_zero_snr: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NoiseScheduleSpec | None:
        """The spec of a diffusers scheduler config; None for one it cannot describe (`trained_betas`, bad values)."""
        if config.get("trained_betas") is not None:
            return None
        try:
            return cls(**{k: config[k] for k in cls.model_fields if k in config})
        except ValidationError:
            return None

    def noise_schedule(self) -> NoiseSchedule:
        from adaptive_sampler.noise_schedule import NoiseSchedule  # torch and diffusers: only for the σ exports

        return NoiseSchedule.from_config(self.model_dump())


def noise_schedule_mismatch(artifact: ScheduleArtifact, config: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The β-schedule settings in which the noise schedule `artifact` records differs from a diffusers scheduler
    `config`'s: {key: (the artifact's value, the config's)}, empty when they agree. Nothing is compared when the
    artifact records no noise schedule or `NoiseScheduleSpec.from_config` cannot describe the config."""
    recorded, own = artifact.noise_schedule, NoiseScheduleSpec.from_config(config)
    if recorded is None or own is None:
        return {}
    return {key: (value, getattr(own, key)) for key, value in recorded if value != getattr(own, key)}


class ConditionsRecord(BaseModel):
    """The conditions a schedule was tuned under: a text-to-image model's prompts (the SHA-256 of the JSON list, and
    the prompts file's name if they came from one), negative prompt, guidance scale and guidance interval
    ([HIGH, LOW]: guidance only where LOW <= t <= HIGH; None: every step, as in files from before it was recorded),
    or a class-conditional model's labels (guidance 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prompts_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    prompts_file: str | None = None
    negative_prompt: str | None = None
    guidance_scale: float | None = Field(None, ge=1)
    guidance_interval: tuple[float, float] | None = None
    labels: list[int] | None = None

    @field_validator("guidance_interval")
    @classmethod
    def _valid_guidance_interval(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None:
            GuidanceInterval(*value)  # FieldError naming guidance_interval: HIGH > LOW >= 0, finite
        return value

    @staticmethod
    def prompts_digest(prompts: Sequence[str]) -> str:
        """The SHA-256 of a prompt list (as a JSON list, UTF-8)."""
        return hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()


class ScheduleArtifact(BaseModel):
    """An exported timestep schedule with its provenance.

    `timesteps` obey the shared rule (non-empty, finite, unique, strictly descending, inside
    [0, num_train_timesteps - 1]); a bad list fails validation at field `timesteps`. A list may be fractional
    (learned by gradient descent, say); `fractional` records it, and is filled in from the list when omitted.
    """

    model_config = ConfigDict(extra="forbid")
    format_version: Literal[1] = 1
    num_train_timesteps: int = Field(gt=0)
    timesteps: list[int | float]
    fractional: bool = False
    solver: Literal["ddim", "dpmpp-2m", "unipc"] = "ddim"
    eta: float = Field(0.0, ge=0.0, le=1.0)
    model: ModelIdentity
    conditions: ConditionsRecord | None = None  # None: an unconditional model, or a file from before it was recorded
    noise_schedule: NoiseScheduleSpec | None = None
    objective: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    method: str = Field(min_length=1)
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    interpolated: bool = False

    @field_validator("timesteps", mode="before")
    @classmethod
    def _valid_timesteps(cls, value: list[int | float], info: ValidationInfo) -> list[int | float]:
        total = info.data.get("num_train_timesteps")
        if total is None:  # num_train_timesteps itself failed; pydantic reports that error
            return value
        return check_timesteps(value, total)

    @model_validator(mode="after")
    def _fractional_matches(self) -> ScheduleArtifact:
        if "fractional" not in self.model_fields_set:  # omitted: taken from the list
            self.fractional = is_fractional(self.timesteps)
        elif self.fractional != is_fractional(self.timesteps):
            kind = "fractional" if is_fractional(self.timesteps) else "integer"
            raise ValueError(f"fractional={self.fractional} does not match the list, which is {kind}")
        return self

    @classmethod
    def load(cls, path: str | Path) -> ScheduleArtifact:
        """Parse a schedule file (raises pydantic's ValidationError, a FileFieldError("path") for a folder or FIFO;
        see `read` for errors that name the file)."""
        _refuse_non_file(Path(path), "path", str(path), "a schedule artifact")
        return cls.model_validate_json(Path(path).read_text())

    @classmethod
    def read(cls, path: str | Path, *, field: str = "schedule", shown: str | None = None) -> ScheduleArtifact:
        """Parse a schedule file given by input `field`; anything wrong with it (missing, unreadable, not UTF-8, not
        JSON, not an object, a bad field inside) raises a `FileFieldError` naming `field`, the file (as `shown`,
        default the path) and the field inside it, e.g. "policy: file:x.json: timesteps[2]: 1200 is outside …"."""
        shown = shown or str(path)
        data = read_json_object(path, field, shown, what="a schedule artifact")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            inner, value, rule = validation_parts(exc, tuple(cls.model_fields))
            raise FileFieldError(field, shown, rule, inner, value) from None

    def save(self, path: str | Path) -> None:
        """Write atomically: a reader never sees a half-written file, and a failed write leaves the old one."""
        atomic_write_bytes(path, (self.model_dump_json(indent=2) + "\n").encode())

    def to_diffusers_timesteps(self) -> list[int]:
        """For `pipeline(..., timesteps=...)` or `AdaptiveDDIMScheduler.set_timesteps(timesteps=...)`.

        diffusers' schedulers index their tables by integer t, so a fractional list is rounded (kept strictly
        descending, see `discretize`) with a warning; `to_sigmas` keeps the fractional values.
        """
        if not self.fractional:
            return [int(t) for t in self.timesteps]
        rounded = discretize(np.asarray(self.timesteps, dtype=np.float64), self.num_train_timesteps).tolist()
        warnings.warn(f"timesteps: the list is fractional; diffusers' timesteps= takes integers, so it is rounded "
                      f"to {rounded} (sigmas= keeps the fractional values)", UserWarning, stacklevel=2)
        return rounded

    def to_sigmas(self, schedule: NoiseSchedule | None = None) -> list[float]:
        """σ_t = sqrt((1 - ᾱ_t) / ᾱ_t) at each timestep plus the final 0, for σ-based schedulers' `sigmas=`; a
        fractional list's σ interpolates in log-SNR (`NoiseSchedule.sigma_at`)."""
        schedule = schedule or self._own_schedule()
        if schedule.num_train_timesteps != self.num_train_timesteps:
            raise FieldError("schedule", schedule.num_train_timesteps, "training timesteps differ from the "
                             f"artifact's num_train_timesteps={self.num_train_timesteps}")
        import torch

        t = torch.tensor(self.timesteps, dtype=torch.float64 if self.fractional else torch.int64)
        return [*schedule.sigma_at(t).tolist(), 0.0]

    def to_comfyui_sigmas(self, schedule: NoiseSchedule | None = None) -> str:
        """ComfyUI SIGMAS as text: comma-separated σ values ending in 0 (for string-to-SIGMAS nodes)."""
        return ", ".join(f"{s:.6f}" for s in self.to_sigmas(schedule))

    def _own_schedule(self) -> NoiseSchedule:
        if self.noise_schedule is None:
            raise FieldError("schedule", None, "cannot be used: the artifact has no noise_schedule; pass the model's "
                             "NoiseSchedule")
        return self.noise_schedule.noise_schedule()
