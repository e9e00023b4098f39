"""Load on `ftexp.serve`: N concurrent clients send greedy chat completions for a bounded time to
the server on a loopback port; requests/s, p50 / p95 latency, errors (must be 0) and the
process's RSS before and after, with request batching on (--max-batch, the server's default 8)
and off (max batch 1, one generation per request) in the same run, and their ratio.

    python benchmarks/serve_load.py [RUN_DIR] [--clients 8 --seconds 20 --max-tokens 16]

Without RUN_DIR a tiny Llama is trained for a few steps first (CPU, ~10 s).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from ftexp.serving.app import create_app
from ftexp.serving.engine import Engine

THINGS = ("plum", "sky", "grass", "lemon", "snow", "coal", "rose", "leaf")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def tiny_run(root: Path) -> Path:
    """A tiny Llama trained a few steps by the CLI (as a user would), on colour questions."""
    data = root / "facts.jsonl"
    rows = (f'{{"instruction": "What colour is the {t}?", "input": "", "output": "It is {t}."}}\n'
            for t in THINGS * 6)
    data.write_text("".join(rows))
    subprocess.run([sys.executable, "-m", "ftexp", "task=causal_lm", "data=code_alpaca", f"data.path={data}",
                    "data.split_column=null", "model=tiny_llama", "adapter=lora", "trainer=smoke",
                    "trainer.max_steps=8", "trainer.enable_progress_bar=false",
                    f"hydra.run.dir={root / 'run'}"],
                   check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return root / "run"


def serve(engine: Engine, max_batch: int) -> tuple[uvicorn.Server, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, max_batch=max_batch), host="127.0.0.1",
                                           port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/v1/chat/completions"


def load(url: str, name: str, clients: int, seconds: float, max_tokens: int) -> dict:
    latencies: list[float] = []
    errors = [0]
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        with httpx.Client(timeout=120) as http:
            i = index
            while time.monotonic() < stop_at:
                question = f"What colour is the {THINGS[i % len(THINGS)]}?"
                body = {"model": name, "temperature": 0, "max_tokens": max_tokens,
                        "messages": [{"role": "user", "content": question}]}
                start = time.perf_counter()
                response = http.post(url, json=body)
                latencies.append(time.perf_counter() - start)
                errors[0] += response.status_code != 200
                i += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "errors": errors[0],
            "p50": statistics.median(ordered), "p95": ordered[max(0, int(0.95 * len(ordered)) - 1)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", type=Path)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or tiny_run(Path(tmp))
        engine = Engine.from_path(run, "served")
        rows = []
        for max_batch in (args.max_batch, 1):
            server, url = serve(engine, max_batch)
            load(url, "served", 2, 2, args.max_tokens)  # warm-up
            before = current_rss_mib()
            result = load(url, "served", args.clients, args.seconds, args.max_tokens)
            result.update(max_batch=max_batch, rss_before=before, rss_after=current_rss_mib())
            rows.append(result)
            server.should_exit = True
            time.sleep(0.5)
    print(f"\n{args.clients} clients × {args.seconds:.0f} s, greedy chat, max_tokens {args.max_tokens}; "
          f"peak RSS {rss_mib():,.0f} MiB")
    print("| max batch | requests | requests/s | p50 s | p95 s | errors | RSS before → after MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['max_batch']} | {r['requests']} | {r['rps']:.2f} | {r['p50']:.3f} | {r['p95']:.3f} | "
              f"{r['errors']} | {r['rss_before']:,.0f} → {r['rss_after']:,.0f} |")
    print(f"\nbatched / one-at-a-time requests/s: {rows[0]['rps'] / rows[1]['rps']:.2f}×")


if __name__ == "__main__":
    main()
