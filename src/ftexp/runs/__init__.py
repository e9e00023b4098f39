"""What a run is made of and how it is kept, shared by every command and part:

    run_dir.py      a run directory's files (config.yaml, metrics.json, environment.json, …)
    atomic.py       every file written atomically (temporary name, then rename)
    checkpoints.py  crash-safe checkpoints, resume, consolidating sharded saves
    seeds.py        repeated seeds: run groups, `seeds=`, their checks
    tuning.py       settings measured before training (auto batch size, LR find / scaling)
    objective.py    which way a metric is better, what a pruned trial looks like
    errors.py       ftexp's one-line errors and how the CLI reports them
    console.py      what a command prints (rich), apart from the log
    paths.py        where conf/ and the shipped data live (checkout or wheel)

Imported by everything else. These modules import nothing of ftexp but each other (tuning, which
only the training recipe uses, also reads ftexp.builders.optim's learning-rate rules); the light
ones (errors, objective, atomic, paths, run_dir) import no torch, so the config checks, the
sweeper plugin and the report use them before any job starts.
"""
