"""User-facing errors: one line that names the problem and the fix, and a non-zero exit."""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from collections.abc import Iterator

EXIT_USER_ERROR = 2


def did_you_mean(word: str, options: list[str] | tuple[str, ...], prefix: str = "") -> str:
    """' Did you mean '<prefix>x'?' for the closest option, or '' when nothing is close."""
    by_lower = {str(o).lower(): str(o) for o in options}  # case-blind: Sgd finds SGD
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" Did you mean '{prefix}{by_lower[close[0]]}'?" if close else ""


class FtexpError(Exception):
    """A mistake in the user's config, data or environment, explained in one line."""


class ConfigError(FtexpError):
    """The composed config is invalid: unknown key or option, wrong type, contradiction."""


class DataError(FtexpError):
    """The data file is missing, unreadable or does not fit the config."""


class OutOfMemory(FtexpError):
    """The job needed more GPU or CPU memory than there is."""


# What the memory-hungry knobs are called, for the out-of-memory hint.
OUT_OF_MEMORY_HINT = ("try data.batch_size=auto (the largest batch that fits), "
                      "model.gradient_checkpointing=true, quant=4bit with adapter=lora, "
                      "or a smaller model")
# How allocators word a failed allocation in a RuntimeError (CPU: DefaultCPUAllocator; CUDA
# before torch.OutOfMemoryError existed; MPS; bitsandbytes / cuBLAS).
_OOM_PHRASES = ("out of memory", "can't allocate memory", "cannot allocate memory",
                "cublas_status_alloc_failed")


def is_out_of_memory(err: BaseException) -> bool:
    """A failed allocation: torch.OutOfMemoryError (CUDA), a MemoryError, or a RuntimeError that
    says so (CPU allocator). Checks torch's class only if torch is already imported, so importing
    this module stays light."""
    if isinstance(err, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom_class = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom_class is not None and isinstance(err, oom_class):
        return True
    return isinstance(err, RuntimeError) and any(p in str(err).lower() for p in _OOM_PHRASES)


def out_of_memory_error(err: BaseException) -> OutOfMemory:
    """The one-line message for a failed allocation, with what to change."""
    detail = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    # The CPU allocator's line starts with its own source location; keep the readable part.
    detail = detail.split("DefaultCPUAllocator: ", 1)[-1].split(" (Triggered internally")[0]
    where = "GPU" if "cuda" in str(err).lower() or type(err).__name__ == "OutOfMemoryError" else "CPU"
    if isinstance(err, MemoryError):
        where = "CPU"
    detail = f" ({detail[:200]})" if detail else ""
    return OutOfMemory(f"out of {where} memory{detail}; {OUT_OF_MEMORY_HINT}.")


def debug_requested(debug_flag: bool = False) -> bool:
    """Full tracebacks when `debug=true` or FTEXP_DEBUG / HYDRA_FULL_ERROR is set."""
    return bool(debug_flag) or any(os.environ.get(v) for v in ("FTEXP_DEBUG", "HYDRA_FULL_ERROR"))


@contextlib.contextmanager
def reported_as_one_line(debug: bool = False, exit_on_error: bool = True) -> Iterator[None]:
    """Turn an FtexpError — or running out of memory — into `ftexp: error: …` on stderr and exit
    code 2 (unless debugging). With `exit_on_error=False` the line is written and the error
    re-raised (sweep jobs)."""
    try:
        yield
    except (FtexpError, MemoryError, RuntimeError) as err:
        if isinstance(err, FtexpError):
            message = str(err)
        elif is_out_of_memory(err):
            message = str(out_of_memory_error(err))
        else:
            raise
        if debug_requested(debug):
            raise
        message = " ".join(message.strip().splitlines())  # one line, whatever it held
        sys.stderr.write(f"ftexp: error: {message}\n")
        if not exit_on_error:
            raise
        sys.exit(EXIT_USER_ERROR)
