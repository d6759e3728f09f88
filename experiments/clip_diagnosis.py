"""Is the non-monotone DDIM curve of the embedded model caused by clip_sample? Same seeds, n=300, uniform DDIM at
100 and 20 steps, with the config's x̂0 clipping on and off.

    python experiments/clip_diagnosis.py   (writes experiments/results/clip_diagnosis.json)
"""

from __future__ import annotations

import json
from pathlib import Path

from adaptive_sampler.metrics.evaluation import score_samples
from adaptive_sampler.model_adapter import ModelAdapter, X0Processing
from adaptive_sampler.models import load_model
from adaptive_sampler.policies import Uniform
from adaptive_sampler.sampler import sample

OUT = Path(__file__).parent / "results" / "clip_diagnosis.json"


def main() -> None:
    model = load_model("embedded")
    schedule = model.adapter().schedule
    fids = {}
    for steps in (100, 20):
        for clip in (True, False):
            adapter = ModelAdapter(model.network, schedule, x0_processing=X0Processing(clip_sample=clip))
            result = sample(adapter, Uniform().timesteps(steps, schedule), model.sample_shape, 300, seed=0,
                            progress=True)
            fids[f"ddim-{steps} clip={clip}"] = score_samples(result.samples).fid
            print(fids, flush=True)
    OUT.write_text(json.dumps(fids, indent=2) + "\n")


if __name__ == "__main__":
    main()
