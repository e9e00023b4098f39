"""Builders: plain functions that turn settings into the objects a run trains with (backbone,
adapter, k-bit quantization, strategy, optimizer, schedule, loggers, `_target_` nodes, the network
an earlier run trained). They take plain values, not Hydra config objects, so tests and tasks call
them directly. May import ftexp.config and ftexp.runs; imported by ftexp.tasks, the commands and
ftexp.config.rules (phase 2, inside functions)."""
