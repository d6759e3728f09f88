"""The options of a run that loads a model, declared once: each field's default, bound and description are a flag
of `adaptive-sampler sample`, `eval` or `tune` (the CLI builds the commands from these fields) and its validation.

`ModelOptions` <- `DrawOptions` (what `sample` and `eval` share) <- `SampleOptions`, `EvalOptions`; `TuneOptions`
(tuning.settings) adds the tune settings. Policies, monitors, finishes and row policies stay spec strings here; the
CLI turns them into the library's objects. Nothing here imports torch, so `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adaptive_sampler.errors import FieldError

if TYPE_CHECKING:
    from adaptive_sampler.pipeline import Conditions

__all__ = ["DEFAULT_FINISH_SPEC", "DTYPE_NAMES", "POLICY_NAMES", "SOLVER_NAMES", "CalibrateOptions", "DrawOptions",
           "EvalOptions", "ModelOptions", "SampleOptions"]

# The registries' names, spelled out so that `--help` imports no torch; a test checks them against
# policies.POLICY_NAMES, solvers.SOLVERS, model_adapter.NETWORK_DTYPES and finish.DEFAULT_FINISH.spec().
POLICY_NAMES = ("uniform", "leading", "trailing", "quadratic", "karras", "logsnr", "front-loaded", "explicit",
                "learned:<model>/<family>-<N>", "file:<path>")
SOLVER_NAMES = ("ddim", "dpmpp-2m", "unipc")
DTYPE_NAMES = ("float32", "float16", "bfloat16")
DEFAULT_FINISH_SPEC = "tail:3:t"
# far above any real run, low enough that nothing overflows or tries to allocate terabytes before it starts
MAX_N = 10**7
MAX_BATCH_SIZE = 10**5


class ModelOptions(BaseModel):
    """The model a command loads, the conditions it samples with, and where its network runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field("embedded", description=(
        "'embedded', 'embedded-t2i', or a diffusers folder: a UNet folder or DDPM pipeline folder (unconditional or "
        "class-conditional UNet2DModel), or a Stable Diffusion 1.x/2.x folder (unet/, vae/, text_encoder/, "
        "tokenizer/, scheduler/)"))
    # sample i takes prompt i mod P / label i mod L; in tune they are part of the model's identity, so a study
    # resumes only with the same ones
    prompt: str | None = Field(None, description="the prompt of every sample (text-to-image models)")
    prompts: Path | None = Field(None, description=(
        "a text file of prompts, one per line (blank lines skipped); sample i takes prompt i mod P"))
    negative_prompt: str | None = Field(None, description=(
        "the prompt of guidance's unconditional branch (default: the empty prompt)"))
    guidance_scale: float | None = Field(None, description=(
        "classifier-free guidance scale >= 1; default: the model's recommended scale (3 for embedded-t2i), else 7.5 "
        "for text-to-image models, 1 (no guidance) otherwise"))
    guidance_interval: str | None = Field(None, description=(
        "HIGH:LOW, e.g. 700:200: guidance only at the timesteps t with LOW <= t <= HIGH (text-to-image models with "
        "guidance); outside it a step skips the unconditional rows and costs 1 network evaluation per sample, not 2"))
    class_labels: str | None = Field(None, description=(
        "class labels of a class-conditional model, e.g. 0,3,7; sample i takes label i mod L"))
    classes: str | None = Field(None, description=(
        "'all': sample i takes class i mod the class count (the default of a class-conditional model)"))
    height: int | None = Field(None, description="image height in pixels (default: from the UNet and VAE configs)")
    width: int | None = Field(None, description="image width in pixels (default: from the UNet and VAE configs)")
    network_rows: str = Field("auto", description=(
        "row policy of the network calls: auto (fixed:8 on CPU, buckets on CUDA), N or fixed:N (chunks of N rows: "
        "bitwise batch-size invariant), buckets[:MIN] (padded to a power of two), all or 0 (no padding)"))
    device: str = Field("auto", description="auto, cpu, cuda, …")
    allow_pickle: bool = Field(False, description="allow pickled .bin/.pt weights (they can run code)")

    @field_validator("guidance_interval")
    @classmethod
    def _valid_guidance_interval(cls, value: str | None) -> str | None:
        from adaptive_sampler.guidance import GuidanceInterval  # no torch

        if value is not None:
            GuidanceInterval.parse(value)  # FieldError naming guidance_interval; the model's range: when bound
        return value

    @field_validator("network_rows")
    @classmethod
    def _valid_network_rows(cls, value: str) -> str:
        from adaptive_sampler.model_adapter import row_spec_from_text  # torch: only when a command runs

        row_spec_from_text(value)  # FieldError naming network_rows
        return value

    def conditions(self) -> Conditions:
        """The prompts / labels / guidance of the options, checked on their own (FieldError naming the field); a
        prompts file is read here."""
        from adaptive_sampler.pipeline import Conditions

        return Conditions.from_flags(prompt=self.prompt, prompts=self.prompts, negative_prompt=self.negative_prompt,
                                     guidance_scale=self.guidance_scale, class_labels=self.class_labels,
                                     classes=self.classes, guidance_interval=self.guidance_interval)


class DrawOptions(ModelOptions):
    """What `sample` and `eval` share: the plan, the solver, the monitors, the samples and the shared outputs."""

    policy: str = Field("uniform", description=(
        f"one of: {', '.join(POLICY_NAMES)}, or adaptive:TOLERANCE (per-sample step-size control), or steered:N (N "
        "steps uniform in log-SNR that a steering --monitor steer-NAME:LOW:HIGH doubles or halves per sample)"))
    steps: int | None = Field(None, description="number of steps (NFE); optional with --timesteps")
    timesteps: str | None = Field(None, description="explicit list, e.g. 999,950,900,800 (policy 'explicit')")
    eta: float = Field(0.0, ge=0, le=1, description="DDIM η in [0, 1]; 0 is deterministic, 1 is DDPM-like")
    solver: str = Field("ddim", description=f"update rule, one of: {', '.join(SOLVER_NAMES)} (only ddim takes "
                                            "η > 0)")
    monitor: list[str] | None = Field(None, description=(
        "early-exit monitor NAME[:THRESHOLD] on x̂0, repeatable (any fires); no threshold = calibrated default"))
    finish: str | None = Field(None, description=(
        "how a sample a --monitor ends finishes: x0 (return x̂0 at once) or tail[:K[:t|logsnr]] (K more solver "
        f"steps to t = 0, counted in NFE; tail = tail:3:t); default {DEFAULT_FINISH_SPEC}; needs --monitor"))
    n: int = Field(16, ge=1, le=MAX_N, description="number of samples")
    batch_size: int = Field(64, ge=1, le=MAX_BATCH_SIZE, description="samples per batch")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="sample i uses the random stream (seed, i)")
    dtype: str = Field("float32", description=(
        f"the network's weights: {', '.join(DTYPE_NAMES)} (the sampler's state stays float32)"))
    save: Path | None = Field(None, description=(
        ".npy float32 array (n, C, H, W) of the images in [-1, 1] (a latent model's decoded by its VAE)"))
    json_path: Path | None = Field(None, description="write the run's report as JSON")
    allow_other_model: bool = Field(False, description=(
        "run a --policy file:PATH or learned: list made for another model (other weights or noise schedule), with "
        "a warning, instead of refusing it"))


class SampleOptions(DrawOptions):
    """Every option of `adaptive-sampler sample`."""

    out: Path | None = Field(None, description=(
        "image grid of the samples (.png, .jpg, .bmp, .gif, .tif, .webp)"))
    save_latents: Path | None = Field(None, description=".npy float32 array (n, c, h, w) of a latent model's latents")


class EvalOptions(DrawOptions):
    """Every option of `adaptive-sampler eval`."""

    n: int = Field(2000, ge=1, le=MAX_N, description=(
        "number of samples; must exceed the feature dimension (128)"))
    bootstrap: int = Field(0, ge=0, le=10**5, description="bootstrap resamplings for 95% intervals of FID and KID")
    features: str = Field("embedded", description=(
        "metric back-end: embedded (Fashion-MNIST features, shipped reference; FID/KID in the held-out space "
        "beside), heldout (the held-out Fashion-MNIST features alone, which no search scores in), inception:PATH "
        "(pytorch-fid weights file), clip:PATH (transformers CLIP folder: FID features and CLIP score), "
        "fidelity[:lpips[:NET]] (PSNR/SSIM/LPIPS to a many-step reference of the same noise), label or "
        "label:heldout (class agreement by either classifier)"))
    reference: Path | None = Field(None, description=(
        "reference statistics .npz (mu, sigma; from `adaptive-sampler stats`) in the --features space"))
    reference_steps: int = Field(200, description="steps of the many-step reference (--features fidelity)")


class CalibrateOptions(ModelOptions):
    """Every option of `adaptive-sampler calibrate`: the plan, the monitor, one target, the two disjoint seed sets."""

    policy: str = Field("uniform", description=(
        f"a static list: one of {', '.join(p for p in POLICY_NAMES if p != 'explicit')} (a threshold holds for one "
        "list only)"))
    steps: int = Field(20, ge=1, description="number of steps (NFE) of the full runs")
    solver: str = Field("ddim", description=f"update rule, one of: {', '.join(SOLVER_NAMES)}")
    monitor: str = Field("x0-l2", description=(
        "the monitor whose threshold is searched: NAME[,KEY=VALUE...] (guardrails, space=image), one term, e.g. "
        "x0-l2 or lpips,patience=2; a wall-clock deadline cannot be calibrated"))
    target_psnr: float | None = Field(None, description=(
        "target: PSNR (dB) of the early exits to the full runs of the same seeds at least DB, e.g. 30"))
    target_fid_pct: float | None = Field(None, ge=0, description=(
        "target: FID of the early exits at most X % above the full runs' (embedded feature space; --n above 128)"))
    target_kid_pct: float | None = Field(None, ge=0, description=(
        "target: KID of the early exits at most X % above the full runs' (embedded feature space)"))
    n: int = Field(32, ge=1, le=MAX_N, description="samples per seed set (the calibration set and the held-out set)")
    seed: int = Field(1000, ge=0, le=2**63 - 1, description="the calibration samples' seed")
    heldout_seed: int = Field(2000, ge=0, le=2**63 - 1, description=(
        "the held-out samples' seed (another than --seed): what the threshold gives on samples it was not chosen on"))
    batch_size: int = Field(64, ge=1, le=MAX_BATCH_SIZE, description="samples per batch")
    grid_size: int = Field(256, ge=2, le=10**5, description="candidate thresholds (quantiles of the monitor's scores)")
    json_path: Path | None = Field(None, description="write the calibration (threshold, NFE, fidelity) as JSON")

    @model_validator(mode="after")
    def _one_target_and_disjoint_seeds(self) -> CalibrateOptions:
        given = [f for f in ("target_psnr", "target_fid_pct", "target_kid_pct") if getattr(self, f) is not None]
        if not given:
            raise FieldError("target_psnr", None, "and the other targets are not given; give exactly one: "
                                                  "--target-psnr DB, --target-fid-pct X or --target-kid-pct X")
        if len(given) > 1:
            first = f"--{given[0].replace('_', '-')} {getattr(self, given[0])}"
            raise FieldError(given[1], getattr(self, given[1]), f"is given with {first}; give exactly one target")
        if self.heldout_seed == self.seed:
            raise FieldError("heldout_seed", self.heldout_seed, "is also --seed; held-out samples need their own seed")
        return self
