"""What a run leaves in its directory besides Lightning's checkpoints and logs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONFIG_FILE = "config.yaml"      # the resolved, validated config
LABELS_FILE = "labels.json"      # the target: label values in head order, or a number's scale
METRICS_FILE = "metrics.json"
ENVIRONMENT_FILE = "environment.json"
PREDICTIONS_FILE = "predictions_test.csv"
GENERATIONS_FILE = "generations.jsonl"  # causal LM: sample generations at each evaluation
LR_FIND_PLOT = "lr_find.png"     # learning_rate=find: the LR range test
BEST_CHECKPOINT = "checkpoints/best.ckpt"

_PACKAGES = ("ftexp", "torch", "transformers", "lightning", "torchmetrics", "hydra-core",
             "omegaconf", "peft", "bitsandbytes", "tokenizers", "pandas", "numpy")


def write_json(path: Path, payload: Any) -> None:
    """Write via a temporary name and rename, so a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    OmegaConf.save(cfg, run_dir / CONFIG_FILE, resolve=True)


def git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(project_root: Path) -> dict[str, Any]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "packages": versions, "git_commit": git_commit(project_root),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}
