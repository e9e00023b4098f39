"""Serve a trained causal-LM run (or an exported model directory) over an OpenAI-compatible API:

    python -m ftexp.serve <run dir | exported dir> [--port 8000] [--api-key KEY]

Routes: GET /v1/models, POST /v1/chat/completions and /v1/completions (streaming with
"stream": true). Any OpenAI client works: `OpenAI(base_url="http://127.0.0.1:8000/v1",
api_key=KEY)`, the model name being the directory's name (or --model-name). Chat messages go
through the run's prompt as training built it: its chat template for conversation-trained runs,
else its prompt template with the one user message. Requests that arrive together are generated
as one batch. Binds to 127.0.0.1 unless --host says otherwise; set an API key (--api-key or
FTEXP_API_KEY) before exposing it. On CUDA, --backend vllm hands the export to vLLM's own OpenAI
server instead (serving/vllm_backend.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ftexp.runs.console import quiet_third_party
from ftexp.runs.errors import FtexpError, reported_as_one_line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ftexp-serve", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path,
                        help="a finished causal_lm / dpo / grpo … run, or ftexp.export's output")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("FTEXP_API_KEY"),
                        help="require `Authorization: Bearer KEY` (default: $FTEXP_API_KEY; none: open)")
    parser.add_argument("--model-name", help="the model id clients send (default: the directory's name)")
    parser.add_argument("--max-tokens-limit", type=int, default=4096, help="the largest max_tokens accepted")
    parser.add_argument("--max-batch", type=int, default=8, help="requests generated together at most")
    parser.add_argument("--backend", choices=("transformers", "vllm"), default="transformers",
                        help="transformers (CPU or GPU, default) or vllm (CUDA: vLLM's own server "
                             "over the export)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    with reported_as_one_line(args.debug):
        if args.backend == "vllm":
            _serve_with_vllm(args)
        try:
            import uvicorn

            from ftexp.serving.app import create_app
        except ImportError as err:
            raise FtexpError(f"serving needs {err.name}, which is not installed; run: pip install "
                             "'ftexp[serve]'.") from err
        quiet_third_party()
        from ftexp.serving.engine import Engine

        engine = Engine.from_path(args.source, args.model_name)
        if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
            print(f"ftexp serve: listening on {args.host} without an API key: anyone who can reach it can "
                  "use it; set --api-key (or FTEXP_API_KEY).", file=sys.stderr)
        print(f"serving '{engine.name}' on http://{args.host}:{args.port}/v1", file=sys.stderr)
        app = create_app(engine, api_key=args.api_key, max_tokens_limit=args.max_tokens_limit,
                         max_batch=args.max_batch)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def _serve_with_vllm(args: argparse.Namespace) -> None:
    """Replace this process with vLLM's OpenAI server over the run's export."""
    from ftexp.serving import vllm_backend

    vllm_backend.check_available()
    plan = vllm_backend.plan(args.source)
    vllm_backend.prepare(plan, args.source)
    name = args.model_name or args.source.resolve().name
    argv = vllm_backend.command(plan, name, args.host, args.port, args.api_key, args.max_batch)
    print(f"ftexp serve: {' '.join(a if a != args.api_key else '***' for a in argv)}", file=sys.stderr)
    sys.stderr.flush()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    from ftexp.runs.process import run_command

    run_command(main)
