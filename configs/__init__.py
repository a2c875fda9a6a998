"""Experiment configs: one `ml_collections` file per experiment of the paper.

Each file defines `get_config(arg=None)`; `arg='smoke'` (the command line's
`--config=configs/FILE.py:smoke`) shrinks the experiment to a CPU run of
seconds. `experiments.config_checks.validate` checks a config before
training.
"""
