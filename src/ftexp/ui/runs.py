"""The run page's side of the web UI, without any UI package: launch a run as a subprocess of the
same CLI (so nothing differs from the command line), tail its console log, read its curves from
csv/metrics.csv, stop it with SIGTERM (the run saves its state at the next batch boundary, as
resume expects), and list the run directories with their config groups, metrics and status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ftexp.reporting.collect import is_run_dir, load_run
from ftexp.runs.errors import FtexpError
from ftexp.ui.compose import GROUPS

# Exit status of a run that SIGTERM stopped after saving its state (ftexp.train).
STOPPED_EXIT = 2
# csv/metrics.csv columns that index the curves rather than being one.
_INDEX_COLUMNS = ("step", "epoch")


@dataclass
class Launched:
    """A run this UI started: its process and where its console output goes."""
    name: str
    path: Path
    log: Path
    argv: list[str]
    process: subprocess.Popen
    stop_requested: bool = False

    @property
    def status(self) -> str:
        code = self.process.poll()
        if code is None:
            return "stopping" if self.stop_requested else "running"
        if code == 0:
            return "finished"
        return "stopped" if self.stop_requested and code == STOPPED_EXIT else f"failed (exit {code})"


class Launcher:
    """Runs under one directory: those launched from here, and any others found there."""

    def __init__(self, runs_dir: Path, logs_dir: Path, program: list[str] | None = None):
        self.runs_dir, self.logs_dir = Path(runs_dir), Path(logs_dir)
        self.program = program or [sys.executable, "-m", "ftexp"]
        self.launched: dict[str, Launched] = {}

    def launch(self, argv: list[str]) -> Launched:
        """Start `python -m ftexp <argv>` with its run dir under runs_dir; the console log is kept
        beside (not in) the run dir, so a run dir holds what the CLI writes and nothing else."""
        name = self._new_name()
        path, log = self.runs_dir / name, self.logs_dir / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered, and rich's tables laid out for a wide console rather than a pipe's 80 columns.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": os.environ.get("COLUMNS", "140")}
        with log.open("wb") as out:
            process = subprocess.Popen([*self.program, *argv, f"hydra.run.dir={path.resolve()}"],
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True)
        self.launched[name] = Launched(name, path, log, list(argv), process)
        return self.launched[name]

    def _new_name(self) -> str:
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        name, n = stamp, 1
        while name in self.launched or (self.runs_dir / name).exists():
            n += 1
            name = f"{stamp}_{n}"
        return name

    def get(self, name: str) -> Launched:
        if name not in self.launched:
            raise FtexpError(f"no run named '{name}' was launched here; pick one from the list.")
        return self.launched[name]

    def stop(self, name: str) -> None:
        """SIGTERM to the run's process: it stops at the next batch boundary and saves its state."""
        run = self.get(name)
        if run.process.poll() is None:
            run.stop_requested = True
            run.process.send_signal(signal.SIGTERM)

    def stop_all(self, timeout_s: float = 30) -> None:
        for name in self.launched:
            self.stop(name)
        for run in self.launched.values():
            try:
                run.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                run.process.kill()

    def status(self, path: Path) -> str:
        launched = self.launched.get(path.name)
        if launched is not None and launched.path == path:
            return launched.status
        return "finished" if (path / "metrics.json").is_file() else "incomplete"

    def run_dirs(self) -> list[Path]:
        """The run dirs under runs_dir (one level, as the CLI names them), newest first."""
        if not self.runs_dir.is_dir():
            return []
        dirs = [p for p in self.runs_dir.iterdir() if p.is_dir() and is_run_dir(p)]
        return sorted(dirs, key=lambda p: p.stat().st_mtime, reverse=True)

    def table(self) -> pd.DataFrame:
        """One row per run dir: name, status, its config-group choices (in the compose page's
        order), its final metrics."""
        rows = []
        for path in self.run_dirs():
            run = load_run(path, path.name)
            metrics = {k: v for k, v in run.metrics.items() if isinstance(v, (int, float))
                       and not isinstance(v, bool)}
            choices = {g: str(run.choices[g]) for g in GROUPS if g in run.choices}
            rows.append({"run": path.name, "status": self.status(path), **choices, **metrics})
        return pd.DataFrame(rows)


def log_tail(path: Path, lines: int = 40, max_bytes: int = 64_000) -> str:
    """The log's last lines as a terminal shows them: a progress bar that redraws itself with
    carriage returns is its latest state, not every state."""
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - max_bytes))
        text = f.read().decode("utf-8", errors="replace")
    shown = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join(shown[-lines:])


def curves(run_dir: Path) -> pd.DataFrame:
    """The run's logged metrics in long form (step, value, metric), for a line plot; empty until
    the first row is written. Lightning's CSVLogger leaves a metric's cell empty on the rows other
    metrics were logged on, so each metric keeps only the rows that have it."""
    path = run_dir / "csv" / "metrics.csv"
    empty = pd.DataFrame({"step": pd.Series(dtype=float), "value": pd.Series(dtype=float),
                          "metric": pd.Series(dtype=str)})
    try:
        frame = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return empty  # not written yet, or caught mid-write: the next refresh reads it
    if "step" not in frame.columns:
        return empty
    metrics = [c for c in frame.columns if c not in _INDEX_COLUMNS]
    long = frame.melt(id_vars="step", value_vars=metrics, var_name="metric").dropna(subset=["value"])
    long = long[pd.to_numeric(long["value"], errors="coerce").notna()]
    return long.astype({"step": float, "value": float})[["step", "value", "metric"]].reset_index(drop=True)


def loss_curves(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the losses, the other metrics) of curves(): two plots, as their scales differ. The learning
    rate and throughput (lr-*, perf/*) are left out: they describe the run, not what it learnt."""
    names = frame["metric"].astype(str)
    is_loss = names.str.contains("loss")
    others = ~is_loss & ~names.str.startswith(("lr-", "perf/"))
    return frame[is_loss].reset_index(drop=True), frame[others].reset_index(drop=True)
