"""The record handed to callbacks and monitors after every step."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepInfo:
    """One sampling step of the active samples of a batch.

    `sample_indices` are the global indices (into the n requested samples) of the rows of `x_t`, `x0` and `eps`;
    `t` and `t_prev` are per-row timesteps (t_prev = -1 is the clean end of the chain). `finishing` (bool [rows],
    or None when the run has no tail finish) marks rows a monitor already ended that are walking their finishing
    tail: monitors do not judge them.
    """

    step: int
    t: torch.Tensor
    t_prev: torch.Tensor
    x_t: torch.Tensor
    x0: torch.Tensor
    eps: torch.Tensor
    sample_indices: torch.Tensor
    finishing: torch.Tensor | None = None
