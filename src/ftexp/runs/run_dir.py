"""What a run leaves in its directory besides Lightning's checkpoints and logs."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ftexp.runs import atomic

CONFIG_FILE = "config.yaml"      # the resolved, validated config
LABELS_FILE = "labels.json"      # the target: label values in head order, or a number's scale
METRICS_FILE = "metrics.json"
ENVIRONMENT_FILE = "environment.json"
PREDICTIONS_FILE = "predictions_test.csv"
GENERATIONS_FILE = "generations.jsonl"  # causal LM: sample generations at each evaluation
EXAMPLE_LOSSES_FILE = "losses_{split}.jsonl"  # causal LM: per-example loss (test; latest validation)
LR_FIND_PLOT = "lr_find.png"     # learning_rate=find: the LR range test
TUNED_FILE = "tuned.json"        # batch size and learning rate the run trains with (auto/find resolved)
BEST_CHECKPOINT = "checkpoints/best.ckpt"

_PACKAGES = ("ftexp", "torch", "transformers", "lightning", "torchmetrics", "hydra-core",
             "omegaconf", "peft", "bitsandbytes", "tokenizers", "pandas", "numpy")


# -- secrets: never written into the run dir --------------------------------------------------------
# A config key or environment variable is secret when a word of its name ends in one of these
# (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, PGPASSWORD, hub_token, apiKey); words are split
# at non-alphanumerics, so TOKENIZERS_PARALLELISM and max_new_tokens are not.
SECRET_NAME_ENDINGS = ("token", "key", "secret", "password", "passwd", "credentials")
REDACTED = "<redacted>"
# Secret values shorter than this are not hunted down in text (HF_HUB_DISABLE_IMPLICIT_TOKEN=1 must
# not turn every "1" into <redacted>); values under secret-named keys, and `name=value` with a
# secret-named name, are redacted whatever their length.
_MIN_SECRET_LENGTH = 8
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
# `name=value` with a secret-named name, as in command lines and Hydra's override lists.
_SECRET_ASSIGNMENT = re.compile(r"(?i)(\b[\w.+~-]*(?:token|key|secret|password|passwd|credentials)=)"
                                r"([^\s,'\"\]]+)")


def is_secret_name(name: str) -> bool:
    words = re.split(r"[^a-z0-9]+", str(name).lower())
    return any(w.endswith(SECRET_NAME_ENDINGS) for w in words if w)


def secret_values(environ: dict[str, str] | None = None, argv: list[str] | None = None) -> set[str]:
    """Values to keep out of files: secret-named environment variables and `key=value` arguments
    whose key's last part is secret-named (e.g. hydra.job.env_set.HF_TOKEN=…)."""
    environ = dict(os.environ if environ is None else environ)
    argv = sys.argv[1:] if argv is None else argv
    found = {v for k, v in environ.items() if is_secret_name(k) and len(v.strip()) >= _MIN_SECRET_LENGTH}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and len(value) >= _MIN_SECRET_LENGTH and is_secret_name(key.lstrip("+~").split(".")[-1]):
            found.add(value)
    return found


def redact_text(text: str, secrets: set[str] | None = None) -> str:
    """`text` with known secret values, passwords in URLs and Hugging Face tokens replaced."""
    for secret in sorted(secret_values() if secrets is None else secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + REDACTED + "@", text)
    text = _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED, text)
    return _HF_TOKEN.sub(REDACTED, text)


def redact(value: Any, secrets: set[str] | None = None, key: str = "") -> Any:
    """A plain container (config, JSON payload) with secrets redacted: any string under a
    secret-named key, and secret values / URL passwords inside every other string."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, dict):
        return {k: redact(v, secrets, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secrets, key) for v in value]
    if isinstance(value, str):
        if value and is_secret_name(key):
            return REDACTED
        return redact_text(value, secrets)
    return value


def redacted_config(cfg: DictConfig) -> DictConfig:
    """A copy of the (resolved) config with secrets redacted, for saving and printing."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.create(redact(plain))


def redact_hydra_files(run_dir: Path) -> None:
    """Hydra writes the composed config and the command-line overrides (.hydra/*.yaml) before the
    job starts; rewrite those that hold a secret."""
    subdir: str | None = ".hydra"
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            hydra = HydraConfig.get()
            if Path(hydra.runtime.output_dir).resolve() == run_dir.resolve():
                subdir = hydra.output_subdir  # null: Hydra wrote no copies
    except (ImportError, ValueError, AttributeError):
        pass
    hydra_dir = run_dir / subdir if subdir else None
    if hydra_dir is None or not hydra_dir.is_dir():
        return
    secrets = secret_values()
    for path in sorted(hydra_dir.glob("*.yaml")):
        original = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        cleaned = redact(original, secrets)
        if cleaned != original:
            with atomic.atomic_path(path) as tmp:
                OmegaConf.save(OmegaConf.create(cleaned), tmp, resolve=False)


def redacted_command(argv: list[str], secrets: set[str] | None = None) -> list[str]:
    """The command line with the values of secret-named `key=value` arguments redacted."""
    secrets = secret_values(argv=argv[1:]) if secrets is None else secrets
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and value and is_secret_name(key.lstrip("+~").split(".")[-1]):
            out.append(f"{key}={REDACTED}")
        else:
            out.append(redact_text(arg, secrets))
    return out


def write_json(path: Path, payload: Any) -> None:
    """Indented JSON with sorted keys, written atomically (a crash never leaves half a file)."""
    atomic.write_json(path, payload, indent=2, sort_keys=True, default=str)


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    """The resolved config, secrets redacted; Hydra's copies in .hydra/ are redacted too."""
    with atomic.atomic_path(run_dir / CONFIG_FILE) as tmp:
        OmegaConf.save(redacted_config(cfg), tmp, resolve=False)
    redact_hydra_files(run_dir)


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
            "command": redacted_command([Path(sys.argv[0]).name, *sys.argv[1:]])}
