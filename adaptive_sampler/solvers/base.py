"""What a solver is: the update from a row's last accepted point to its next timestep, with per-row history."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Protocol

import torch


@dataclass(frozen=True)
class Point:
    """An evaluated point per row: its timestep t [rows], x_t, the prediction there (x̂0, ε̂) and ᾱ_t shaped
    [rows, 1, ...] to broadcast against x."""

    t: torch.Tensor
    x: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor
    alpha_bar: torch.Tensor

    def where(self, rows: torch.Tensor, other: Point) -> Point:
        """This point on `rows` (bool [rows]), `other` elsewhere."""

        def pick(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
            return torch.where(rows.view(-1, *([1] * (mine.ndim - 1))), mine, theirs)

        return Point(*(pick(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)))

    def keep(self, rows: torch.Tensor) -> Point:
        """The point of the rows that stay in the batch (`rows`: bool [rows])."""
        return Point(*(getattr(self, f.name)[rows] for f in fields(self)))


@dataclass
class SolverState:
    """Per-row history a multistep solver carries between accepted steps, row-aligned with the active samples.

    When samples leave the batch, `keep` drops their rows so every remaining sample keeps its own history.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def keep(self, rows: torch.Tensor) -> None:
        """Drop the history of the rows that leave the batch (`rows`: bool [rows], True = stays)."""
        self.tensors = {name: value[rows] for name, value in self.tensors.items()}


def push_history(anchor: Point | None, accepted: torch.Tensor, state: SolverState) -> None:
    """On `accepted` rows, the old `anchor` (None at a batch's first evaluation) becomes the previous point (x̂0 and
    ᾱ) in `state`; `has_prev` marks rows that have one, so multistep solvers take first order without it."""
    if anchor is None:
        rows = len(accepted)
        state.tensors = {"has_prev": torch.zeros(rows, dtype=torch.bool, device=accepted.device)}
        return
    mask = accepted.view(-1, *([1] * (anchor.x0.ndim - 1)))
    old = state.tensors
    state.tensors = {
        "x0_prev": torch.where(mask, anchor.x0, old["x0_prev"]) if "x0_prev" in old else anchor.x0,
        "alpha_bar_prev": torch.where(mask, anchor.alpha_bar, old["alpha_bar_prev"]) if "alpha_bar_prev" in old
        else anchor.alpha_bar,
        "has_prev": old["has_prev"] | accepted,
    }


class Solver(Protocol):
    """One sampling algorithm over per-row (t, t_prev) pairs.

    `accept` makes the newly evaluated point the rows' anchor where `accepted` (a corrector may refine its x) and
    keeps the old anchor elsewhere; `step` goes from the anchor to ᾱ_to (ᾱ = 1 returns x̂0). `noise` is given only
    when η > 0.
    """

    name: str
    supports_eta: bool

    def accept(self, new: Point, anchor: Point | None, accepted: torch.Tensor, state: SolverState) -> Point:
        """The rows' new anchor: `new` (the point just evaluated) where `accepted` [rows], else `anchor` (the last
        accepted point; None at a batch's first evaluation); `state` is the per-row history."""
        ...

    def step(self, anchor: Point, alpha_bar_to: torch.Tensor, state: SolverState, eta: float,
             noise: torch.Tensor | None) -> torch.Tensor:
        """x at ᾱ_to from the anchor.

        Args:
            alpha_bar_to: ᾱ of the next timestep, per row (1: return x̂0).
            eta: DDIM's η (0 for deterministic solvers).
            noise: the step's fresh noise when η > 0, else None.
        """
        ...


def replace_anchor(new: Point, anchor: Point | None, accepted: torch.Tensor) -> Point:
    """`new` on `accepted` rows, the old `anchor` elsewhere (None: the first evaluation of a batch, always
    accepted)."""
    return new if anchor is None else new.where(accepted, anchor)
