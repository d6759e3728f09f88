"""Draw what each shipped learned list does: its timesteps against the step index beside uniform, karras and trailing
of the same length, one panel per list, one figure per model and solver (docs/results/img/lists-MODEL-SOLVER.png).
The extremes a search finds (a very small last step, a list crowded at one end) show at a glance: t + 1 is on a log
scale, where the last steps near t = 0 are apart.

    python experiments/plot_learned_lists.py
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from bench_heldout_space import MODEL_SPEC, RIVALS, learned_entries
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from adaptive_sampler.models import load_model
from adaptive_sampler.policies import make_policy
from adaptive_sampler.schedules.catalogue import load_entry

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "img"


def main() -> None:
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name in learned_entries():
        model, family = name.split("/")
        groups[(model, family.rsplit("-", 1)[0])].append(name)
    OUT.mkdir(parents=True, exist_ok=True)
    for (model, solver), names in groups.items():
        schedule = load_model(MODEL_SPEC[model]).adapter().schedule
        names = sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]))
        fig = Figure(figsize=(3.2 * len(names), 3.0))
        FigureCanvasAgg(fig)
        for i, name in enumerate(names):
            entry = load_entry(name)
            steps = len(entry.timesteps)
            ax = fig.add_subplot(1, len(names), i + 1)
            for rival in RIVALS:
                ax.plot(range(steps), (make_policy(rival).timesteps(steps, schedule) + 1).tolist(), ".-", lw=1,
                        ms=3, alpha=0.7, label=rival)
            ax.plot(range(steps), [t + 1 for t in entry.timesteps], "k*-", lw=2, ms=7, label="learned")
            ax.set_title(f"{solver}-{steps}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.set_yscale("log")  # the last steps, where lists differ most, are near t = 0
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_ylabel("timestep t + 1 (log scale)", fontsize=8)
                ax.legend(fontsize=7)
        fig.suptitle(f"learned:{model}/{solver}-N against the static lists of the same N", fontsize=10, y=1.03)
        path = OUT / f"lists-{model}-{solver}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        print(f"wrote {path.relative_to(OUT.parents[2])}")


if __name__ == "__main__":
    main()
