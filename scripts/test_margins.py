"""How far the learning tests clear their bars, across seeds and CPU kernel choices.

A learning test (one that takes the `margin` fixture, see tests/conftest.py) asserts a learned
outcome: an accuracy, a reward, a loss falling. Its trajectory depends on the seed and on which
fp32 kernels the processor runs, so a bar met on one machine can be missed on another. This script
runs the learning tests once per (kernel setting, seed), each run in a pytest process of its own
with FTEXP_TEST_SEED and the setting's environment, collects every value the tests recorded, and
prints one row per (test, quantity): its bar, the worst and median value over the runs, and the
worst run's margin, (worst - bar) / |bar| on the side the bar faces.

The kernel settings imitate other processors on this one: ATEN_CPU_CAPABILITY picks torch's
vectorised kernels (default = none, avx2 = what an AVX2-only machine runs), ONEDNN_MAX_CPU_ISA
caps oneDNN's (its matmuls and convolutions). They are read when torch starts, hence a process per run.

    .venv/bin/python scripts/test_margins.py                      # fast tier, 5 seeds x 4 settings
    .venv/bin/python scripts/test_margins.py --tier all -k tiny_gpt2 --seeds 3 --settings native,aten-avx2

Exit status 1 when a run failed or a margin is under --min-margin (10% by default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import MARGINS_VARIABLE, SEED_VARIABLE  # noqa: E402  (one name for each variable)

SETTINGS = {
    "native": {},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
}
TIERS = {"fast": "learning and not slow and not gpu", "slow": "learning and slow and not gpu",
         "all": "learning and not gpu"}


def pytest_command(args: argparse.Namespace, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", TIERS[args.tier],
            *(["-k", args.k] if args.k else []), *extra, *args.pytest_args]


def selected_tests(args: argparse.Namespace) -> list[str]:
    """The learning tests the runs will run (those that assert exact outcomes record no value)."""
    result = subprocess.run(pytest_command(args, "--collect-only"), cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return [line for line in result.stdout.splitlines() if "::" in line]


def run_once(setting: str, seed: int, args: argparse.Namespace, records: Path) -> dict:
    """One pytest process over the learning tests: its outcome line and wall time."""
    env = {**os.environ, **SETTINGS[setting], SEED_VARIABLE: str(seed), MARGINS_VARIABLE: str(records),
           "HF_HUB_OFFLINE": "1"}
    # torch.compile's kernel cache, one per setting: inductor does not key it by ATEN_CPU_CAPABILITY,
    # so a run under one setting would load C++ kernels another built (seen: compile errors and a
    # segfault in test_knobs' compiled network when aten-default / aten-avx2 ran beside native).
    env["TORCHINDUCTOR_CACHE_DIR"] = str(records.with_name(f"{records.stem}.inductor-{setting}"))
    if args.jobs > 1:  # processes side by side on few cores: one thread each
        env.setdefault("OMP_NUM_THREADS", "1")
    command = pytest_command(args)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    # Each run's whole output beside the records, for reading a failure (or a crash) afterwards.
    log = records.with_name(f"{records.stem}.{setting}.seed{seed}.log")
    log.write_text(result.stdout + result.stderr)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    failed = [line.split(" ")[1] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    summary = lines[-1] if lines else ""
    if result.returncode < 0 or result.returncode > 1:  # killed by a signal, or pytest itself broke
        summary = f"exit code {result.returncode} after: {summary[:60]}"
        failed = failed or ["(the whole run)"]
    return {"setting": setting, "seed": seed, "code": result.returncode, "summary": summary,
            "failed": failed, "log": str(log), "seconds": time.perf_counter() - start}


def margin_of(op: str, bar: float, worst: float) -> float:
    """How far the worst value clears the bar, relative to the bar (absolute for a bar of 0)."""
    gap = worst - bar if op in (">", ">=") else bar - worst
    return gap / abs(bar) if bar else gap


def table(records: list[dict], min_margin: float, tests: list[str] = (), outcomes: list[dict] = (),
          ) -> tuple[list[str], int]:
    """Markdown rows, one per (test, quantity), thinnest margin first, then the tests that record
    no value (exact outcomes: they pass or fail); and how many rows are thin or failed."""
    groups: dict[tuple[str, str, str, float], list[float]] = {}
    for r in records:
        groups.setdefault((r["test"], r["what"], r["op"], r["bar"]), []).append(r["value"])
    every_test = {*tests, *(k[0] for k in groups)}
    failures = {test: sum(test in o["failed"] for o in outcomes) for test in every_test}
    rows, thin = [], 0
    for (test, what, op, bar), values in groups.items():
        worst = min(values) if op in (">", ">=") else max(values)
        share = margin_of(op, bar, worst)
        thin += share < min_margin
        rows.append((share, f"| {test.removeprefix('tests/')} | {what} | {op} {bar:g} | {len(values)} | "
                            f"{failures[test]} | {worst:.4g} | {statistics.median(values):.4g} | {share:+.0%}"
                            f"{' **thin**' if share < min_margin else ''} |"))
    exact = sorted(set(tests) - {k[0] for k in groups})
    thin += sum(failures[test] > 0 for test in exact)
    header = ["| test | quantity | bar | runs | failed | worst | median | margin |",
              "|---|---|---|---|---|---|---|---|"]
    return header + [row for _, row in sorted(rows)] + [
        f"| {test.removeprefix('tests/')} | exact outcomes (no value recorded) | pass | {len(outcomes)} | "
        f"{failures[test]} | | | |" for test in exact], thin


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seed offsets 0..N-1 (0: the tests' own seeds)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated, of {list(SETTINGS)}")
    parser.add_argument("--tier", choices=TIERS, default="fast")
    parser.add_argument("-k", default="", help="pytest -k expression, to measure some tests only")
    parser.add_argument("--jobs", type=int, default=1,
                        help="pytest processes at once (one thread each if > 1)")
    parser.add_argument("--min-margin", type=float, default=0.10)
    parser.add_argument("--records", type=Path, help="keep the recorded values here (JSON lines)")
    parser.add_argument("--append", action="store_true",
                        help="add to --records and tabulate all of it "
                             "(e.g. slow tests: more seeds on one setting)")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments, after --")
    args = parser.parse_args()
    settings = args.settings.split(",")
    if unknown := [s for s in settings if s not in SETTINGS]:
        parser.error(f"unknown setting {unknown[0]!r}: choose from {', '.join(SETTINGS)}")

    records = args.records or Path(tempfile.mkdtemp(prefix="ftexp-margins-")) / "records.jsonl"
    records.parent.mkdir(parents=True, exist_ok=True)
    if not (args.append and records.exists()):
        records.write_text("")
    tests = selected_tests(args)
    runs = [(setting, seed) for setting in settings for seed in range(args.seeds)]
    print(f"{len(runs)} runs of the {args.tier} tier's learning tests ({len(settings)} settings x "
          f"{args.seeds} seeds), {args.jobs} at a time; values in {records}", flush=True)
    outcomes = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for outcome in pool.map(lambda run: run_once(*run, args, records), runs):
            outcomes.append(outcome)
            print(f"  {outcome['setting']:>12} seed +{outcome['seed']}: {outcome['summary']} "
                  f"({outcome['seconds']:.0f} s)", flush=True)
            for name in outcome["failed"]:
                print(f"      failed: {name} (output: {outcome['log']})", flush=True)

    recorded = [json.loads(line) for line in records.read_text().splitlines() if line]
    if not recorded:
        print("no learning test recorded a value (is the -k expression right?)")
        return 1
    rows, thin = table(recorded, args.min_margin, tests, outcomes)
    print("\n" + "\n".join(rows))
    failed_runs = [o for o in outcomes if o["code"] != 0]
    print(f"\n{len(rows) - 2} rows, {thin} with a margin under {args.min_margin:.0%} or a failure; "
          f"{len(failed_runs)} of {len(outcomes)} runs failed; "
          f"{sum(o['seconds'] for o in outcomes) / 60:.1f} min of pytest in all")
    return 1 if thin or failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
