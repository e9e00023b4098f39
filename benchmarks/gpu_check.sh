#!/usr/bin/env bash
# Every GPU verification ftexp has, in one run on one H100 / H200, within about 8 minutes:
#
#   bash benchmarks/gpu_check.sh                 # results in $GPU_CHECK_OUT (default outputs/gpu_check)
#
#   1. throughput   benchmarks/gpu_throughput.py: transformers + PEFT vs ftexp's training step on a
#                   Llama-3.2-1B-shaped model (LoRA, QLoRA NF4, full; 8x2048 and 8x512)
#   2. quant_memory benchmarks/gpu_quant_memory.py: peak memory of bf16 / 8-bit / 4-bit LoRA bases
#   3. strategies   benchmarks/gpu_strategies.py: LoRA / QLoRA under auto, FSDP, ZeRO-2 (loss falls,
#                   export loads)
#   4. quant_bases  benchmarks/gpu_quant_bases.py: LoRA on quant=hqq, quant=eetq and (with --gptq DIR)
#                   a base saved GPTQ-quantized: loss falls, peak memory, weight bytes vs bf16
#   5. bloom_fsdp   conf/experiment/bloom3b_full_fsdp_classification.yaml shortened: random-init BLOOM
#                   of BLOOM-3B's width and vocabulary (4 of its 30 layers), full fine-tuning under
#                   FSDP, 10 steps
#
# Each part has its own time limit (seconds, overridable: T_THROUGHPUT=300 bash ...) and its own log;
# one summary table is printed at the end and written to $GPU_CHECK_OUT/summary.txt.
# On a machine without the packages (no network), first run benchmarks/gpu_wheels.sh where pip works
# and bring benchmarks/wheels/ along: they are installed from there with --no-deps --no-index.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT_DIR=${GPU_CHECK_OUT:-${OUT:-$ROOT/outputs/gpu_check}}
mkdir -p "$OUT_DIR"
PY=${PY:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/ftexp-site}
T_THROUGHPUT=${T_THROUGHPUT:-210}
T_QUANT=${T_QUANT:-75}
T_STRATEGIES=${T_STRATEGIES:-105}
T_BLOOM=${T_BLOOM:-75}
T_QUANT_BASES=${T_QUANT_BASES:-60}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

for folder in benchmarks/wheels benchmarks/wheels-quant; do
  if compgen -G "$folder/*.whl" > /dev/null; then
    echo "installing $(ls "$folder"/*.whl | wc -l) wheels from $folder"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$folder"/*.whl || echo "gpu_check: installing from $folder failed" >&2
  fi
done
# The checkout's code first (what is being checked), then the carried packages.
export PYTHONPATH="$ROOT/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"

SUMMARY=()
part() {  # part NAME LIMIT_S COMMAND...: run with a time limit, log, record status and seconds
  local name=$1 limit=$2; shift 2
  local log="$OUT_DIR/$name.log" start end rc status
  echo "=== $name (limit ${limit}s): $*"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  end=$(date +%s)
  case $rc in
    0) status=ok ;;
    124|137) status=TIMEOUT ;;
    *) status="FAILED($rc)" ;;
  esac
  tail -n 25 "$log"
  SUMMARY+=("$name|$status|$((end - start))")
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT_DIR/gpu.txt" 2>&1 || true

part throughput "$T_THROUGHPUT" "$PY" benchmarks/gpu_throughput.py --warmup 5 --steps 20 \
  --shapes 8x2048,8x512 --json "$OUT_DIR/throughput.json"
part quant_memory "$T_QUANT" "$PY" benchmarks/gpu_quant_memory.py --hidden 2048 --layers 8 --steps 20
part strategies "$T_STRATEGIES" "$PY" benchmarks/gpu_strategies.py --layers 4 --hidden 512 --samples 96 \
  --strategies auto fsdp deepspeed_zero2 --out "$OUT_DIR/strategies"
part quant_bases "$T_QUANT_BASES" "$PY" benchmarks/gpu_quant_bases.py --hidden 1024 --layers 4 --steps 20
# model=tiny_bloom resized: the experiment's hub model cannot be fetched, and Hydra cannot merge a
# random_init dict into bloom_3b's null one.
part bloom_fsdp "$T_BLOOM" "$PY" -m ftexp +experiment=bloom3b_full_fsdp_classification \
  model=tiny_bloom model.dtype=bfloat16 model.random_init.vocab_size=250880 \
  model.random_init.hidden_size=2560 model.random_init.n_layer=4 model.random_init.n_head=32 \
  trainer.devices=1 trainer.max_steps=10 trainer.max_epochs=1 trainer.limit_val_batches=2 \
  trainer.limit_test_batches=2 trainer.enable_progress_bar=false data.max_train_samples=160 \
  callbacks.checkpoint=false "hydra.run.dir=$OUT_DIR/bloom_fsdp"

"$PY" - "$OUT_DIR" "${SUMMARY[@]}" <<'EOF' | tee "$OUT_DIR/summary.txt"
"""One table: each part's status, time and headline figures."""
import json
import re
import sys
from pathlib import Path

out, parts = Path(sys.argv[1]), [p.split("|") for p in sys.argv[2:]]


def last_lines(name, n):
    log = out / f"{name}.log"
    lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()] if log.exists() else []
    return lines[-n:]


def headline(name):
    if name == "throughput" and (out / "throughput.json").exists():
        rows = json.loads((out / "throughput.json").read_text())
        return [f"{r['row']} {r['batch']}x{r['seq']}: ftexp/HF tokens/s {r['speedup']:.2f}x, "
                f"peak mem HF/ftexp {r['memory_ratio'] or float('nan'):.2f}x, MFU "
                f"{(r['ftexp_mfu'] or 0):.1%} vs {(r['hf_mfu'] or 0):.1%}, first losses "
                f"{r['hf_losses'][0]:.4f} | {r['ftexp_losses'][0]:.4f}" for r in rows]
    if name == "bloom_fsdp" and (out / "bloom_fsdp" / "metrics.json").exists():
        m = json.loads((out / "bloom_fsdp" / "metrics.json").read_text())
        keep = ("val/loss", "val/accuracy", "peak_memory_gib", "fit_seconds")
        return [", ".join(f"{k}={m[k]:.4g}" for k in keep if isinstance(m.get(k), (int, float)))]
    return last_lines(name, 8 if name in ("quant_memory", "strategies") else 6 if name == "quant_bases" else 1)


gpu = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else "?"
print(f"\nGPU check summary ({gpu})")
print(f"{'part':<14}{'status':<12}{'seconds':>8}  headline")
for name, status, seconds in parts:
    lines = headline(name) if status == "ok" else []
    if status != "ok":  # the error line, not a trailing hint
        errors = [line for line in last_lines(name, 40)
                  if re.search(r"(Error|Exception|error):|needs a CUDA", line)]
        lines = errors[-1:] or last_lines(name, 1)
    lines = lines or [""]
    print(f"{name:<14}{status:<12}{seconds:>8}  {lines[0]}")
    for line in lines[1:]:
        print(f"{'':<34}  {line}")
EOF
