"""Reports on finished runs and sweeps (`python -m ftexp.report`), one job per module:

- `collect`: find run dirs and Optuna studies under the given paths, read them into `Comparison`s;
- `figures`: the report's sections (tables, plotly figures, notes) for one comparison;
- `objectives`, `studies`: a run's value of an objective and which way it is better (benchmark
  scores by lm-eval's own word), and the in-memory Optuna study of plain run dirs;
- `configurations`, `examples`, `comparisons`: runs grouped into configurations (seeds of one
  setting), their per-example outputs, and the sections comparing them (seeds table, paired tests,
  what changed, per-class scores, calibration, disagreements, LM generations and losses);
- `benchmarks`: lm-evaluation-harness scores per configuration and paired on the same items;
- `stats`, `replicates`: the statistics of those sections, pure functions of arrays (seeds as
  replicates: the two-level bootstrap and the tests that count seeds);
- `render`: the self-contained HTML page and the Markdown summary;
- `wandb_report`: the same comparison published as a W&B Report.
"""

from ftexp.runs.errors import FtexpError


class ReportError(FtexpError):
    """Nothing to report on, or a report that cannot be made as asked."""
