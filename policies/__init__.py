"""Marks this folder as the package `adaptive_sampler.policy_files` (pyproject's `package-dir`), so that
importlib.resources finds the policy files in an editable install and in the wheel alike. Data only."""
