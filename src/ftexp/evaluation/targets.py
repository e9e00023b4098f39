"""What `ftexp.evaluate` evaluates: a finished run dir (its best weights, rebuilt as training
left them: the PEFT model, or merged with eval.merge_adapter); any model transformers loads — an
exported run, a local model dir, a Hub id — as lm-eval's `--model hf` loads it; or `model=<option>`,
a model group option built as a run would start from it (the baseline of a run from that
option, random-init test models included)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ftexp.runs import run_dir
from ftexp.runs.errors import FtexpError


@dataclass
class Target:
    name: str  # what was evaluated, as results.json names it
    run: Path | None  # the run dir, or None for a model outside any run
    config: DictConfig | None  # the run's config
    mixed_precision: Any = None  # the run's autocast dtype (bf16-mixed, 16-mixed), else None
    model: DictConfig | None = None  # `model=<option>`: the composed model group


def is_run_dir(path: Path) -> bool:
    return (path / run_dir.CONFIG_FILE).is_file() and (path / run_dir.BEST_CHECKPOINT).is_file()


def compose_config(overrides: list[str]) -> DictConfig:
    """ftexp's config composed with `overrides`, as `python -m ftexp` would (unresolved)."""
    from hydra import compose, initialize_config_dir

    import ftexp.cli  # noqa: F401  (registers the resolvers conf/ uses)
    from ftexp.runs.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=overrides)


def describe(target: str) -> Target:
    """Refuse a target that cannot be evaluated, before any weights load."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    if target.startswith("model="):
        try:
            model = compose_config([target, "task=causal_lm"]).model
        except HydraException as err:
            raise FtexpError(f"'{target}': {str(err).splitlines()[0]}") from err
        return Target(target, None, None, model=model)
    path = Path(target)
    if is_run_dir(path):
        cfg = OmegaConf.load(path / run_dir.CONFIG_FILE)
        return Target(f"run {path.name} ({cfg.model.name_or_path})", path, cfg, _autocast(cfg))
    if path.is_dir() and (path / run_dir.CONFIG_FILE).is_file():
        raise FtexpError(f"'{path}' is an unfinished run: {run_dir.BEST_CHECKPOINT} is missing.")
    if path.exists() and not (path / "config.json").is_file():
        raise FtexpError(f"'{path}' is neither a finished ftexp run nor a transformers model directory "
                         "(no config.json).")
    return Target(target, None, None)


def _autocast(cfg: DictConfig) -> Any:
    from ftexp.builders.strategy import autocast_dtype, resolve_precision

    return autocast_dtype(resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator))


def device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_language_model(target: Target, ev: DictConfig) -> tuple[Any, Any]:
    """(network on the evaluation device in eval mode, tokenizer)."""
    if target.run is not None:
        from ftexp.data.causal_lm import decoder_tokenizer
        from ftexp.evaluation.harness import evaluation_network
        from ftexp.predict import load_trained

        task, tokenizer, cfg = load_trained(target.run)
        network = evaluation_network(task.network, ev, cfg.quant.method != "none", device())
        return network, decoder_tokenizer(tokenizer)
    if target.model is not None:
        return _configured_model(target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # As lm-eval's `--model hf --model_args pretrained=<target>` loads it (dtype auto, fast tokenizer).
    try:
        network = AutoModelForCausalLM.from_pretrained(target.name, dtype="auto")
        tokenizer = AutoTokenizer.from_pretrained(target.name, use_fast=True)
    except OSError as err:
        raise FtexpError(f"cannot load '{target.name}' as a causal LM ({str(err).splitlines()[0][:200]}); "
                         "give a run dir, an exported model dir or a Hub id.") from err
    return network.to(device()).eval(), tokenizer


def _configured_model(target: Target) -> tuple[Any, Any]:
    from omegaconf import OmegaConf

    from ftexp.builders.backbone import load_tokenizer
    from ftexp.builders.init_from import load_starting_network
    from ftexp.data.causal_lm import decoder_tokenizer

    m = target.model
    # A random-init option builds the same weights whatever the seed (builders.backbone): the
    # weights every run from that option starts from.
    network = load_starting_network(OmegaConf.to_container(m, resolve=True), None, causal_lm=True)
    tokenizer = load_tokenizer(m.tokenizer or m.name_or_path, trust_remote_code=m.trust_remote_code,
                               revision=m.revision, chat_template=m.chat_template,
                               added_tokens=list(m.add_special_tokens))
    return network.to(device()).eval(), decoder_tokenizer(tokenizer)
