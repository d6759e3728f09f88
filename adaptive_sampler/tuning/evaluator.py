"""Scores a timestep list: samples a fixed seed set with it, chunk by chunk, and hands the chunks to an objective;
the value after each chunk goes to `on_rung` (how a per-budget study reports to its pruner)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adaptive_sampler.errors import FieldError
from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.metrics.feature_net import EMBEDDED_IMAGE_SHAPE, FEATURE_DIM
from adaptive_sampler.model_adapter import Conditioning, ModelAdapter
from adaptive_sampler.models import LoadedModel
from adaptive_sampler.policies import Uniform
from adaptive_sampler.sampler import sample
from adaptive_sampler.solvers import make_solver
from adaptive_sampler.timesteps import validate_timesteps
from adaptive_sampler.tuning.cache import DEFAULT_CACHE_DIR, cached_tensors
from adaptive_sampler.tuning.objectives import Objective, Score, get_objective
from adaptive_sampler.tuning.seeds import SeedSet


def model_identity(model: LoadedModel) -> dict[str, object]:
    """What determines a model's samples besides the schedule: its weights, scheduler config and sample shape, and
    the prompts or labels it is conditioned on (absent for an unconditional model)."""
    scheduler = json.dumps(model.scheduler_config, sort_keys=True, default=str)
    identity: dict[str, object] = {"name": model.name, "weights_sha256": model.weights_sha256,
                                   "scheduler_sha256": hashlib.sha256(scheduler.encode()).hexdigest(),
                                   "sample_shape": list(model.sample_shape)}
    if model.conditions is not None:
        identity["conditions"] = model.conditions.identity()
    return identity


@dataclass(frozen=True)
class Evaluation:
    """An objective value (`value`, in the objective's direction), its companion metrics, and what it cost."""

    value: float
    metrics: dict[str, float]
    n: int
    nfe: float
    wall_s: float


@dataclass
class ScheduleEvaluator:
    """Scores timestep lists for one model, solver (η = 0), objective and seed set.

    `objective` is a registered objective's name or an `Objective` (e.g. a `configured` one). `reference(chunk)` is
    the many-step result of a chunk (`reference_steps` uniform steps of the same solver from the same noise), cached
    under `cache_dir` (None: in memory only). `conditioning` goes to the sampler for every chunk, and sample i of a
    chunk is scored against `prompts[i % P]` and `labels[i % L]`. With `heldout_space` (for the export's held-out
    scores, never for a search), samples of the embedded Fashion-MNIST shape are also scored with FID and KID in the
    held-out feature space (`heldout_space_fid`, `heldout_space_kid` in the metrics).
    """

    model: LoadedModel
    objective: str | Objective
    seeds: SeedSet
    solver: str = "ddim"
    reference_steps: int = 200
    batch_size: int = 64
    network_rows: int | None = 8
    cache_dir: Path | None = DEFAULT_CACHE_DIR
    adapter: ModelAdapter | None = None
    conditioning: Conditioning | None = None
    prompts: Sequence[str] | None = None
    labels: Sequence[int] | None = None
    heldout_space: bool = False
    _references: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.scorer: Objective = (self.objective if isinstance(self.objective, Objective)
                                  else get_objective(self.objective))
        self.solver_impl = make_solver(self.solver)
        self.model_adapter: ModelAdapter = self.adapter or self.model.adapter(network_rows=self.network_rows)
        T = self.model_adapter.schedule.num_train_timesteps
        if not 2 <= self.reference_steps <= T:
            raise FieldError("reference_steps", self.reference_steps, f"is outside [2, {T}] (the training timesteps)")
        if self.batch_size < 1:
            raise FieldError("batch_size", self.batch_size, "is not a positive integer")
        if self.seeds.n < self.scorer.min_n:
            raise FieldError("n", self.seeds.n, f"samples is below the {self.scorer.min_n} that {self.scorer.name} "
                                                "needs")
        self.scorer.check_shape(self.model.image_shape)
        bound = self.model.conditions  # a model bound to prompts or labels (LoadedModel.with_conditions)
        if bound is not None:
            self.conditioning = self.conditioning or bound.conditioning
            self.prompts = self.prompts or bound.prompts
            self.labels = self.labels or bound.labels

    def sample(self, timesteps: torch.Tensor, chunk: int) -> torch.Tensor:
        """Chunk `chunk` of the seed set sampled over `timesteps` with the evaluator's solver, as images (a latent
        model's decoded)."""
        result = sample(self.model_adapter, timesteps, self.model.sample_shape, self.seeds.chunks[chunk],
                        batch_size=self.batch_size, seed=self.seeds.seed + chunk, solver=self.solver_impl,
                        conditioning=self.conditioning)
        if self.model.decoder is None:
            return result.samples
        return self.model.decode(result.samples.to(self.model_adapter.device), self.network_rows or 8).cpu()

    def conditions(self, chunk: int) -> tuple[list[str] | None, list[int] | None]:
        """The prompt and the class label of each sample of chunk `chunk` (None where the run has none)."""
        n = self.seeds.chunks[chunk]
        prompts = [self.prompts[i % len(self.prompts)] for i in range(n)] if self.prompts else None
        labels = [int(self.labels[i % len(self.labels)]) for i in range(n)] if self.labels else None
        return prompts, labels

    def reference(self, chunk: int) -> torch.Tensor:
        """The many-step result for chunk `chunk` of the seed set (cached on disk and in memory)."""
        if chunk not in self._references:
            schedule = self.model_adapter.schedule
            steps = Uniform().timesteps(self.reference_steps, schedule)
            key: dict[str, object] = {
                "model": model_identity(self.model), "solver": self.solver, "policy": "uniform",
                "reference_steps": self.reference_steps, "seed": self.seeds.seed + chunk,
                "n": self.seeds.chunks[chunk], "num_train_timesteps": schedule.num_train_timesteps}
            if self.conditioning is not None:  # the same noise under other prompts is another reference
                prompts, labels = self.conditions(chunk)
                key["conditions"] = {"prompts": prompts, "labels": labels,
                                     "guidance_scale": self.conditioning.guidance_scale}
            tensors = cached_tensors(self.cache_dir, "fidelity-references", key,
                                     lambda: {"samples": self.sample(steps, chunk)})
            self._references[chunk] = tensors["samples"]
        return self._references[chunk]

    def prepare(self) -> None:
        """Compute (or load) everything that does not depend on the schedule (the objective's `prepare`)."""
        self.scorer.prepare(self)

    def evaluate(self, timesteps: Sequence[int | float] | torch.Tensor,
                 on_rung: Callable[[int, float], None] | None = None) -> Evaluation:
        """Sample the seed set over `timesteps` chunk by chunk and score it.

        Args:
            timesteps: the list to score.
            on_rung: called with (samples so far, value so far) after each chunk where the objective is defined;
                it may raise `optuna.TrialPruned`.
        """
        ts = validate_timesteps(timesteps, self.model_adapter.schedule.num_train_timesteps)
        start = time.perf_counter()
        audit = (self.heldout_space and tuple(self.model.image_shape) == EMBEDDED_IMAGE_SHAPE
                 and self.seeds.n > FEATURE_DIM)
        kept: list[torch.Tensor] = []

        def chunks() -> Iterator[tuple[int, torch.Tensor]]:
            for chunk in range(len(self.seeds.chunks)):
                images = self.sample(ts, chunk)
                if audit:
                    kept.append(images)
                yield chunk, images

        score = Score(float("nan"), {})
        for rung, score in zip(self.seeds.rungs, self.scorer.evaluate(chunks(), self), strict=False):
            if on_rung is not None and rung >= self.scorer.min_n and rung < self.seeds.n:
                on_rung(rung, score.value)
        metrics = dict(score.metrics)
        if audit:
            heldout = score_samples(torch.cat(kept), space="heldout")
            metrics |= {"heldout_space_fid": heldout.fid, "heldout_space_kid": heldout.kid}
        return Evaluation(value=score.value, metrics=metrics, n=self.seeds.n, nfe=float(len(ts)),
                          wall_s=time.perf_counter() - start)
