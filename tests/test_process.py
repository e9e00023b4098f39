"""A command that finished leaves without the interpreter's teardown, but after every clean-up a
program can observe: its threads, its atexit handlers, its buffered output."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import atexit, logging, sys, threading, time
    from pathlib import Path
    from ftexp.runs.process import run_command

    out = Path(sys.argv[1])
    def main():
        logging.basicConfig(filename=out / "log.txt", level=logging.INFO)
        logging.info("logged before the exit")  # flushed by logging's own atexit handler
        atexit.register(lambda: (out / "atexit.txt").write_text("ran"))
        def late_writer():
            time.sleep(0.3)
            (out / "thread.txt").write_text("finished")
        threading.Thread(target=late_writer).start()
        sys.stdout.write("no newline, still buffered")
        if sys.argv[2] == "fail":
            raise SystemExit(3)
    run_command(main)
    print("unreachable")
""")


def run_script(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), mode], capture_output=True,
                          text=True, timeout=60)


def test_a_finished_command_exits_zero_after_threads_atexit_handlers_and_output(tmp_path: Path):
    done = run_script(tmp_path, "ok")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "no newline, still buffered"  # flushed, and nothing ran after main
    assert (tmp_path / "thread.txt").read_text() == "finished"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert "logged before the exit" in (tmp_path / "log.txt").read_text()


def test_a_failing_command_keeps_its_exit_code(tmp_path: Path):
    done = run_script(tmp_path, "fail")
    assert done.returncode == 3
    assert (tmp_path / "atexit.txt").read_text() == "ran"
