"""python -m ftexp.ui [--port 7860] [--runs-dir outputs/runs] — the web UI: compose a run from the
config groups, launch it (as `python -m ftexp` would run it) and watch its log and curves, compare
finished runs in the report, chat with one. Binds to 127.0.0.1 unless --host says otherwise; give
--auth USER:PASSWORD (or FTEXP_UI_AUTH) before exposing it: whoever reaches it can start runs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ftexp.runs.errors import FtexpError, reported_as_one_line

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise FtexpError("--auth takes USER:PASSWORD (both non-empty), e.g. "
                         "--auth ftexp:$(openssl rand -hex 12).")
    return user, password


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ftexp.ui", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--runs-dir", type=Path, default=Path("outputs/runs"),
                        help="where launched runs go and finished ones are listed (default: outputs/runs)")
    parser.add_argument("--ui-dir", type=Path, default=Path("outputs/ui"),
                        help="the UI's own files: console logs of launched runs, compare reports")
    parser.add_argument("--auth", default=os.environ.get("FTEXP_UI_AUTH"),
                        help="USER:PASSWORD to log in with (default: $FTEXP_UI_AUTH; none: open)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    with reported_as_one_line(args.debug):
        auth = _auth(args.auth)
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool phones no one
        try:
            from ftexp.ui.app import build, launch_kwargs
        except ImportError as err:
            raise FtexpError(f"the web UI needs {err.name}, which is not installed; run: pip install "
                             "'ftexp[ui]'.") from err
        from ftexp.runs.console import quiet_third_party
        from ftexp.ui.runs import Launcher

        quiet_third_party()
        if args.host not in LOOPBACK and auth is None:
            print(f"ftexp ui: listening on {args.host} without --auth: anyone who can reach it can start "
                  "runs; set --auth USER:PASSWORD (or FTEXP_UI_AUTH).", file=sys.stderr)
        launcher = Launcher(args.runs_dir, args.ui_dir / "logs")
        reports = args.ui_dir / "reports"
        print(f"ftexp ui on http://{args.host}:{args.port} (runs in {args.runs_dir})", file=sys.stderr)
        try:
            build(launcher, reports).launch(auth=auth, **launch_kwargs(args.host, args.port, reports))
        finally:
            launcher.stop_all()  # runs started here end with the UI, each saving its state


if __name__ == "__main__":
    from ftexp.runs.process import run_command

    run_command(main)
