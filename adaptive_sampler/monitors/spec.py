"""Monitors from the command line's strings (`x0-l2:0.01`, `sharpness,patience=2`, `ssim:0.002|max-nfe:30`).

SPEC := TERM ('|' TERM)* (AnyOf) or TERM ('&' TERM)* (AllOf); TERM := NAME[:THRESHOLD](',' KEY=VALUE)*, KEY a
guardrail or `space` (`latent`, the default, or `image`: x̂0 decoded by the VAE, see `monitors.space`). A steering
term is `steer-NAME:LOW:HIGH` (a `SteeringChange`). A quality monitor without a threshold takes the default
calibrated for the model and step count (`calibrated_defaults.json`, written by `experiments/bench_early_exit.py
--write-defaults`) with its guardrails; budgets (`max-nfe`, `deadline`) always need their number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from adaptive_sampler.errors import FieldError, did_you_mean
from adaptive_sampler.monitors.base import Guardrails, Monitor, ThresholdMonitor
from adaptive_sampler.monitors.budget import Deadline, MaxNFE
from adaptive_sampler.monitors.change import SPEC_NAMES, ChangeMonitor, SteeringChange
from adaptive_sampler.monitors.composite import AllOf, AnyOf
from adaptive_sampler.monitors.distances import DISTANCES
from adaptive_sampler.monitors.space import SPACES, Decode, ImageSpace

CHANGE_DISTANCES = {SPEC_NAMES.get(d, d): d for d in DISTANCES}  # spec name -> distance name
MONITORS: dict[str, type[ThresholdMonitor]] = {**{name: ChangeMonitor for name in CHANGE_DISTANCES},
                                               "max-nfe": MaxNFE, "deadline": Deadline,
                                               **{f"steer-{name}": SteeringChange for name in CHANGE_DISTANCES}}
MONITOR_NAMES = tuple(MONITORS)
BUDGET_NAMES = ("max-nfe", "deadline")
DEFAULTS_PATH = Path(__file__).resolve().parent / "calibrated_defaults.json"
DEFAULTS_FORMAT = "adaptive_sampler.calibrated_defaults/1"
_RULE = ("NAME[:THRESHOLD][,KEY=VALUE...] with NAME one of " + ", ".join(MONITOR_NAMES) +
         ", THRESHOLD a number >= 0 (max-nfe: a positive integer; deadline: seconds > 0; steer-NAME: LOW:HIGH), "
         "KEY one of " + ", ".join(Guardrails.model_fields) + ", or space=latent|image")


def load_calibrated_defaults(path: Path | None = None) -> dict[str, Any]:
    """The calibrated-defaults file ({"format", "models": {model: {"steps": {N: {...}}}}})."""
    path = path or DEFAULTS_PATH
    if not path.is_file():
        return {"format": DEFAULTS_FORMAT, "models": {}}
    data = json.loads(path.read_text())
    if data.get("format") != DEFAULTS_FORMAT:
        raise FieldError("path", str(path), f"has format {data.get('format')!r}, not {DEFAULTS_FORMAT!r}")
    return data


def calibrated_default(name: str, model: str | None, num_steps: int | None,
                       path: Path | None = None) -> dict[str, Any]:
    """The stored {"threshold", "guardrails", ...} of monitor `name` (`NAME,space=image` in image space) for
    `model` at `num_steps` steps; where there is none, a FieldError says what exists and how to calibrate."""
    how = ("give a threshold (e.g. {example}) or calibrate one with adaptive_sampler.monitors.calibration."
           "calibrate_threshold (experiments/bench_early_exit.py --write-defaults for the embedded model)")
    example = name.replace(",", ":0.01,", 1) if "," in name else f"{name}:0.01"
    if model is None or num_steps is None:
        raise FieldError("monitor", name, "has no threshold, and without a model name and a step count there is no "
                         "calibrated default to use; " + how.format(example=example))
    models = load_calibrated_defaults(path)["models"]
    if model not in models:
        known = ", ".join(sorted(models)) or "none"
        raise FieldError("monitor", name, f"has no threshold and model {model!r} has no calibrated defaults "
                         f"(models with defaults: {known}); thresholds do not transfer between models, so "
                         + how.format(example=example))
    steps = models[model]["steps"]
    entry = steps.get(str(num_steps), {}).get("monitors", {}).get(name)
    if entry is None:
        have = sorted(int(s) for s, e in steps.items() if name in e.get("monitors", {}))
        raise FieldError("monitor", name, f"has no threshold and no calibrated default for model {model!r} at "
                         f"{num_steps} steps (calibrated at: {', '.join(map(str, have)) or 'no step count'}); "
                         "thresholds do not transfer between step counts, so " + how.format(example=example))
    return entry


def _number(text: str, term: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise FieldError("monitor", term, f"has {what} {text!r}, which is not a finite number; write {_RULE}")
    return value


def split_space(term: str) -> tuple[str, str]:
    """(the term without its `space=` option, the space it asks for: `latent` unless it says `image`)."""
    head, *options = [part.strip() for part in term.split(",")]
    space = "latent"
    kept = [head]
    for option in options:
        key, eq, value = option.partition("=")
        if key.strip() != "space" or not eq:
            kept.append(option)
            continue
        space = value.strip()
        if space not in SPACES:
            raise FieldError("monitor", term, f"has space = {space!r}, which is not one of {', '.join(SPACES)}")
    return ",".join(kept), space


def _guardrails(term: str, fields: dict[str, Any]) -> Guardrails:
    """`Guardrails(**fields)`; a bad one raises a one-line FieldError("monitor") naming the guardrail and its rule."""
    try:
        return Guardrails(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(map(str, err["loc"]))
        if err["type"] == "greater_than_equal":
            rule = f"{key} = {err['input']} is below its minimum, {err['ctx']['ge']}"
        else:
            rule = str(err["msg"]).removeprefix("Value error, ")
        raise FieldError("monitor", term, f"has bad guardrails: {rule}") from None


def _term(term: str, model: str | None, num_steps: int | None, kwargs: dict[str, Any],
          decode: Decode | None) -> Monitor:
    bare, space = split_space(term)
    if space == "image" and bare.split(",")[0].partition(":")[0].strip() in BUDGET_NAMES:
        raise FieldError("monitor", term, "is a budget, which reads no x̂0; space=image applies to quality monitors")
    built = _parse_term(bare, model, num_steps, kwargs, space if decode is not None else "latent")
    return ImageSpace(built, decode) if space == "image" and decode is not None else built


def _parse_term(term: str, model: str | None, num_steps: int | None, kwargs: dict[str, Any], space: str) -> Monitor:
    head, *options = [part.strip() for part in term.split(",")]
    name, sep, threshold_text = head.partition(":")
    name = name.strip()
    if name not in MONITORS:
        raise FieldError("monitor", name, f"(in {term!r}) is not a known monitor{did_you_mean(name, MONITOR_NAMES)}; "
                         f"write {_RULE}")
    fields: dict[str, Any] = {}
    for option in options:
        key, eq, value = option.partition("=")
        key = key.strip()
        if not eq or key not in Guardrails.model_fields:
            raise FieldError("monitor", term, f"has option {option!r}, which is not KEY=VALUE with KEY one of "
                             f"{', '.join(Guardrails.model_fields)}; write {_RULE}")
        number = _number(value.strip(), term, f"{key} =")
        if number != int(number):
            raise FieldError("monitor", term, f"has {key} = {value.strip()!r}, which is not an integer")
        fields[key] = int(number)
    guardrails = _guardrails(term, fields)
    cls = MONITORS[name]
    if cls is SteeringChange:
        low_text, colon, high_text = threshold_text.partition(":")
        if not colon:
            raise FieldError("monitor", term, "is a steering monitor and needs LOW:HIGH, e.g. "
                             f"{name}:0.005:0.05; write {_RULE}")
        low, high = _number(low_text.strip(), term, "low"), _number(high_text.strip(), term, "high")
        try:
            return SteeringChange(CHANGE_DISTANCES[name.removeprefix("steer-")], low, high,
                                  distance_options=kwargs.get(name.removeprefix("steer-")), guardrails=guardrails)
        except ValueError as e:
            raise FieldError("monitor", term, f"is refused: {e}; write {_RULE}") from e
    if sep:
        threshold = _number(threshold_text.strip(), term, "threshold")
    elif name in BUDGET_NAMES:
        example = "max-nfe:30" if name == "max-nfe" else "deadline:2.5"
        raise FieldError("monitor", term, f"is a budget and needs its number, e.g. {example}; write {_RULE}")
    else:
        entry = calibrated_default(name if space == "latent" else f"{name},space=image", model, num_steps)
        calibrated = Guardrails(**entry.get("guardrails", {}))
        if fields and _guardrails(term, {**calibrated.model_dump(), **fields}) != calibrated:
            raise FieldError("monitor", term, "changes the guardrails the default threshold was calibrated with "
                             f"({calibrated.model_dump(exclude_defaults=True) or 'none'}); a threshold depends on "
                             "them, so give a threshold too")
        threshold, guardrails = float(entry["threshold"]), calibrated
    try:
        return make_monitor(name, threshold, guardrails=guardrails, options=kwargs.get(name))
    except ValueError as e:
        raise FieldError("monitor", term, f"is refused: {e}; write {_RULE}") from e


def make_monitor(name: str, threshold: float, *, guardrails: Guardrails | None = None,
                 options: dict[str, Any] | None = None) -> ThresholdMonitor:
    """The threshold monitor a spec term `NAME:THRESHOLD` stands for (`steer-` names are `SteeringChange`s).

    Args:
        name: a key of `MONITORS`, e.g. "x0-l2", "lpips", "max-nfe".
        threshold: where it fires (see the monitor's class).
        guardrails: when it may fire.
        options: its constructor keywords (a change monitor's: its distance's, e.g. {"net": "vgg"} for lpips).
    """
    cls = MONITORS.get(name)
    if cls is None or cls is SteeringChange:
        known = ", ".join(n for n, c in MONITORS.items() if c is not SteeringChange)
        raise FieldError("monitor", name, f"is not a threshold monitor; the names are {known}")
    if name in CHANGE_DISTANCES:
        return ChangeMonitor(CHANGE_DISTANCES[name], threshold, distance_options=options, guardrails=guardrails)
    return cls(threshold, guardrails=guardrails, **(options or {}))


def monitor_from_spec(spec: str, *, model: str | None = None, num_steps: int | None = None,
                      options: dict[str, dict[str, Any]] | None = None, decode: Decode | None = None) -> Monitor:
    """Build a monitor from a spec string (grammar: the module docstring); bad input raises FieldError("monitor").

    Args:
        spec: the spec string.
        model: a `LoadedModel.name`; with `num_steps` it picks calibrated defaults for terms without a threshold.
        num_steps: the step count.
        options: constructor keywords per monitor name, e.g. {"lpips": {"net": "vgg"}}.
        decode: a latent model's `LoadedModel.decode`, for `space=image` terms (a pixel model's x̂0 is the image).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise FieldError("monitor", spec, f"is empty; write {_RULE}")
    kwargs = options or {}
    if "|" in spec and "&" in spec:
        raise FieldError("monitor", spec, "mixes '|' (any of) and '&' (all of); use one of them")
    joiner = "|" if "|" in spec else "&"
    terms = [t.strip() for t in spec.split(joiner)]
    if any(not t for t in terms):
        raise FieldError("monitor", spec, f"has an empty term around {joiner!r}; write TERM{joiner}TERM")
    monitors = [_term(t, model, num_steps, kwargs, decode) for t in terms]
    if len(monitors) == 1:
        return monitors[0]
    return AnyOf(*monitors) if joiner == "|" else AllOf(*monitors)


class CalibrationMonitor(NamedTuple):
    """A monitor to calibrate, at a placeholder threshold, and the space (`latent` or `image`) it reads x̂0 in."""

    monitor: ThresholdMonitor
    space: str


def calibration_monitor(spec: str) -> CalibrationMonitor:
    """The monitor of `NAME[:THRESHOLD][,KEY=VALUE...]` with its guardrails at a placeholder threshold (calibration
    searches it; one in the spec is ignored), and its space; FieldError("monitor") for a composite, a steering
    monitor or a wall-clock budget.

    Args:
        spec: a monitor term, e.g. `lpips,patience=2,space=image`.
    """
    if any(joiner in spec for joiner in "|&"):
        raise FieldError("monitor", spec, "is a composite; calibrate its monitors one at a time")
    term, space = split_space(spec)
    head, sep, guardrails = term.partition(",")
    name = head.partition(":")[0].strip()
    monitor = monitor_from_spec(f"{name}:1{sep}{guardrails}")  # a valid threshold for every calibratable monitor
    if not isinstance(monitor, ThresholdMonitor) or not monitor.calibratable or monitor.steers:
        raise FieldError("monitor", spec, "cannot be calibrated from recorded runs (a wall-clock budget or a steering "
                                          "monitor); give its number directly")
    return CalibrationMonitor(monitor, space)
