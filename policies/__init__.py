"""The schedule catalogue: <model>/<family>-<N>.json files, installed as adaptive_sampler.policy_files."""
