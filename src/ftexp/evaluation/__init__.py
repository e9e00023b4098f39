"""Benchmark evaluation of trained runs (lm-evaluation-harness tasks on a run dir's network, with
or without its adapter): the `eval` config group's settings are read here, scores go to the run's
metrics.json and per-example files the report pairs across runs.

What lives here: the adapter between a run dir and the harness, the `eval` settings' checks that
need the harness, score files. May import ftexp.config, ftexp.runs, ftexp.builders, ftexp.tasks
(to rebuild a run's network); imported by the `evaluate` command, the training recipe (evaluation
after fit) and ftexp.reporting (never the other way round).
"""
