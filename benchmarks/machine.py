"""The header every speed benchmark prints: what kind of processor its figures come from.

Timings differ about twofold between CPUs with native bf16 matrix units (AVX512-BF16 / AMX, where
`trainer.precision=auto` picks bf16-mixed) and fp32-only ones, so a figure without its processor
kind cannot be compared with another."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_kind() -> str:
    """`bf16-capable` (avx512_bf16 or AMX) or `fp32-only` (Linux flags; `unknown` elsewhere)."""
    flags = cpu_flags()
    if not flags:
        return "unknown"
    return "bf16-capable" if flags & {"avx512_bf16", "amx_bf16"} else "fp32-only"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_header() -> str:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"machine: {cpu_model()}, {cores} cores usable, {cpu_kind()} CPU "
            f"(avx512_bf16: {'yes' if 'avx512_bf16' in cpu_flags() else 'no'}); torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads; load average {load} (other work skews timings)")


def processor_line() -> str:
    """The processor in one line, without torch: what .ci/run prints before the tests, so a failing
    CI run names the kind of machine it ran on."""
    flags = cpu_flags()

    def has(flag: str) -> str:
        return "yes" if flag in flags else "no"

    return (f"processor: {cpu_model()} ({cpu_kind()}; avx512_bf16: {has('avx512_bf16')}, "
            f"amx_bf16: {has('amx_bf16')}, avx512f: {has('avx512f')}, avx2: {has('avx2')})")


if __name__ == "__main__":
    print(processor_line())
