"""Reports on finished runs and sweeps (`python -m ftexp.report`), one job per module:

- `collect`: find run dirs and Optuna studies under the given paths, read them into `Comparison`s;
- `figures`: the report's sections (tables, plotly figures, notes) for one comparison;
- `render`: the self-contained HTML page and the Markdown summary;
- `wandb_report`: the same comparison published as a W&B Report.
"""

from ftexp.errors import FtexpError


class ReportError(FtexpError):
    """Nothing to report on, or a report that cannot be made as asked."""
