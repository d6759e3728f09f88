"""Is the non-monotone DDIM curve caused by clip_sample? Same seeds, n=300, uniform 100 and 20 steps, clip on/off.

    python experiments/clip_diagnosis.py   (writes experiments/results/clip_diagnosis.json)
"""
import json, torch
from adaptive_sampler.models import load_model
from adaptive_sampler.model_adapter import ModelAdapter, X0Processing
from adaptive_sampler.policies import Uniform
from adaptive_sampler.sampler import sample
from adaptive_sampler.evaluation import score_samples
m = load_model("embedded")
out = {}
for steps in (100, 20):
    for clip in (True, False):
        a = ModelAdapter(m.network, m.adapter().schedule, x0_processing=X0Processing(clip_sample=clip))
        r = sample(a, Uniform().timesteps(steps, a.schedule), m.sample_shape, 300, batch_size=64, seed=0)
        out[f"ddim-{steps} clip={clip}"] = score_samples(r.samples).fid
        print(out, flush=True)
json.dump(out, open("experiments/results/clip_diagnosis.json", "w"), indent=2)
