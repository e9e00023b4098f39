"""`model.init_from=<run dir>`: start a run from the network an earlier ftexp run trained.

    python -m ftexp +experiment=tiny_sft                                            # → runs/A
    python -m ftexp model=tiny_llama adapter=lora task=dpo data=dpo_demo model.init_from=runs/A

The earlier run is rebuilt from its best checkpoint's hyper-parameters, as `ftexp.export` does
(`merged_network`, shared with it): its base (itself from an init_from, if it had one; random-init
bases are rebuilt identically; quantized ones dequantized), its trained weights, its adapter
merged in (`model.init_from_adapter=merge`). With `continue`, the base stays unmerged and the
adapter's trained tensors wait (`adapter.expect_adapter_state`) until `apply_adapter` wraps
the model in this run's (same) adapter and loads them.

Checked from the configs alone before anything loads (`check_init_from`, phase 1 of
ftexp.config.rules): a finished run, the same base model, a language-model run for a language-model
task, the same adapter for `continue`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ftexp.config.adapter import ADAPTERS, NON_PEFT_ADAPTERS, PROMPT_LEARNING_ADAPTERS
from ftexp.runs import run_dir
from ftexp.runs.errors import ConfigError, FtexpError
from ftexp.runs.paths import config_dir

# -- phase 1: from the configs ----------------------------------------------------------------------

def finished_run(value: str) -> Path:
    """model.init_from's run directory, or a one-line error naming the path and the fix."""
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"model.init_from={value}: there is no directory '{path}'; point it at "
                          "the directory of a finished ftexp run (e.g. outputs/runs/<date>_<time>).")
    for needed in (run_dir.CONFIG_FILE, run_dir.BEST_CHECKPOINT):
        if not (path / needed).is_file():
            raise ConfigError(f"model.init_from={value} is not a finished ftexp run: {needed} is "
                              f"missing; point it at a run that ran to the end with "
                              "callbacks.checkpoint=true (it writes checkpoints/best.ckpt).")
    return path


def earlier_config(path: Path) -> DictConfig:
    """The resolved config.yaml of a finished run."""
    try:
        return OmegaConf.load(path / run_dir.CONFIG_FILE)
    except Exception as err:  # a YAML error of any kind: one line
        raise ConfigError(f"model.init_from={path}: cannot read its {run_dir.CONFIG_FILE} "
                          f"({str(err).splitlines()[0][:120]}).") from err


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _base(model: Any) -> tuple[Any, ...]:
    """What names a model group's weights: the random-init architecture, or the source."""
    if model.get("random_init"):  # name_or_path then names none (older runs kept the tokenizer there)
        return ("random-init", _plain(model.get("random_init")))
    source = str(model.get("name_or_path"))
    local = Path(source).expanduser()
    return (str(local.resolve()) if local.is_dir() else source, model.get("revision"))


def _describe(model: Any, detail: bool = False) -> str:
    """`random-init llama` (with its settings if `detail`), or the weights' source."""
    if model.get("random_init"):
        shown = f" {_plain(model['random_init'])}" if detail else ""
        return f"random-init {model['random_init'].get('model_type')}{shown}"
    revision = f" (revision {model['revision']})" if model.get("revision") else ""
    return f"{model['name_or_path']}{revision}"


def _model_option(model: Any) -> str | None:
    """The conf/model option describing the same base as `model`, for the message."""
    for path in sorted(config_dir().glob("model/*.yaml")):
        option = OmegaConf.load(path)
        if "name_or_path" in option and _base(option) == _base(model):
            return path.stem
    return None


def check_init_from(cfg: DictConfig) -> None:
    """Phase 1 (ftexp.config.rules.check_combinations): everything about model.init_from that the two
    configs can tell, before any weights load. Imports nothing heavy."""
    from ftexp.tasks.registry import TASKS, get_task

    m = cfg.model
    if m.init_from is None:
        return
    run = finished_run(m.init_from)
    earlier = earlier_config(run)
    then = earlier.model
    if _base(m) != _base(then):
        option = _model_option(then)
        fix = f"model={option}" if option else f"model.name_or_path={then.name_or_path}"
        # Both random-init of one type: only the settings tell them apart.
        detail = _describe(m) == _describe(then)
        raise ConfigError(f"model.init_from={m.init_from} was trained from {_describe(then, detail)}, "
                          f"but this run's model is {_describe(m, detail)}; the model group must name the "
                          f"base that run started from: set {fix}.")
    task_then, task_now = earlier.task.name, cfg.task.name
    if get_task(task_now).language_model and not get_task(task_then).language_model:
        lm = " / ".join(n for n, s in TASKS.items() if s.language_model)
        raise ConfigError(f"model.init_from={m.init_from} is a task={task_then} run, which has no "
                          f"language-model head, but task={task_now} needs one; start from a "
                          f"{lm} run, or drop model.init_from.")
    a_now, a_then = _plain(cfg.adapter), _plain(earlier.adapter)
    if m.init_from_adapter == "continue":
        if a_now != a_then:
            keys = (["method"] if a_now["method"] != a_then["method"] else
                    sorted(k for k in {*a_now, *a_then} if a_now.get(k) != a_then.get(k)))
            shown = ", ".join(f"adapter.{k}: {a_then.get(k)!r} there, {a_now.get(k)!r} here"
                              for k in keys[:3])
            raise ConfigError(f"model.init_from_adapter=continue loads the adapter of "
                              f"model.init_from={m.init_from} (adapter={a_then['method']}) into "
                              f"this run's (adapter={a_now['method']}), which must be the same "
                              f"method and keys ({shown}); use the same adapter, or "
                              "model.init_from_adapter=merge.")
        reference = cfg.task.get("reference")
        if reference in ("auto", "adapter", "precompute") and not cfg.task.get("reference_free") \
                and a_now["method"] not in NON_PEFT_ADAPTERS:
            # The reference is the network with its adapter disabled: the continued adapter is
            # the earlier run's training, so that would be the model before it, not after.
            raise ConfigError(f"model.init_from_adapter=continue with task.reference={reference}: "
                              f"the reference (the network with its adapter disabled) would be the "
                              f"model before model.init_from={m.init_from} trained, not the one it "
                              "trained; use model.init_from_adapter=merge (the reference is then "
                              "that run's model), or task.reference=copy.")
    elif a_then["method"] in PROMPT_LEARNING_ADAPTERS:
        raise ConfigError(f"model.init_from={m.init_from} trained adapter={a_then['method']}, whose "
                          "virtual tokens cannot be merged into the weights; set "
                          "model.init_from_adapter=continue with the same adapter.")


def inherit_settings(model: DictConfig) -> None:
    """Fill, in the run's config before it is saved, what the earlier run decides: its absolute
    path (predict / generate / export rebuild from it, wherever they are started) and, when this
    run leaves them null, its tokenizer and chat template."""
    if model.init_from is None:
        return
    path = finished_run(model.init_from).resolve()
    then = earlier_config(path).model
    model.init_from = str(path)
    for key in ("tokenizer", "chat_template"):
        if model.get(key) is None and then.get(key) is not None:
            model[key] = then[key]


def init_from_fingerprint(model: dict[str, Any], memo_dir: str | Path | None = None) -> str | None:
    """What a cache of values computed from the starting weights must be keyed by besides the
    base model: the earlier run's best checkpoint (its contents, not its path) and what becomes of
    its adapter. None without init_from."""
    if not model.get("init_from"):
        return None
    from ftexp.data.cache import digest, file_digest

    checkpoint = Path(model["init_from"]) / run_dir.BEST_CHECKPOINT
    return digest(file_digest(checkpoint, memo_dir), model.get("init_from_adapter", "merge"))


# -- building: the earlier run's network -----------------------------------------------------------

def _is_language_model(hparams: dict[str, Any]) -> bool:
    from ftexp.tasks.registry import get_task

    return get_task(hparams["task"]["name"]).language_model


def _network_prefix(causal_lm: bool) -> str:
    """Where the (PEFT-wrapped) transformer sits in a task's state dict: a language-model task's
    network is it; a head task's holds it as `backbone` beside its head."""
    return "network." if causal_lm else "network.backbone."


def merged_network(hparams: dict[str, Any], state_dict: dict[str, Any], dtype: str,
                   causal_lm: bool = True):
    """The transformer a run trained, rebuilt from its checkpoint (hyper-parameters and state
    dict) with its adapter merged into the base weights, in `dtype`, frozen, in eval mode. A base
    trained in 8-bit / 4-bit is dequantized first, so the merged weights are the ones the adapter
    was trained against. `causal_lm`: the run's task trains a language model (the LM head is
    kept), else a head task's backbone."""
    return trained_network(hparams, state_dict, dtype, causal_lm, merge=True)


def trained_network(hparams: dict[str, Any], state_dict: dict[str, Any], dtype: str,
                    causal_lm: bool = True, merge: bool = True):
    """merged_network, or with `merge=False` the PEFT model itself (its base as trained, a
    quantized one included, for writing the adapter alone)."""
    from ftexp.builders.adapter import apply_adapter
    from ftexp.builders.backbone import DTYPES
    from ftexp.builders.quant import dequantize, quantization_config

    adapter = hparams["adapter"]
    quant = hparams.get("quant") or {"method": "none"}
    base = load_starting_network(hparams["model"], quantization_config(quant), causal_lm=causal_lm)
    if merge and quant["method"] != "none":
        base = dequantize(base)  # quantized layers → plain Linear with the dequantized weights
    if merge or quant["method"] == "none" and getattr(base, "hf_quantizer", None) is None:
        base = base.to(DTYPES[dtype])
    model = apply_adapter(base, adapter, task_type="CAUSAL_LM" if causal_lm else None)
    prefix = _network_prefix(causal_lm)
    weights = {k.removeprefix(prefix): v.to(DTYPES[dtype]) if v.is_floating_point() else v
               for k, v in state_dict.items() if k.startswith(prefix)}
    result = model.load_state_dict(weights, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if ADAPTERS[adapter["method"]].trains_all_weights:
        trainable = {n for n, _ in model.named_parameters()}
    if trainable & set(result.missing_keys) or result.unexpected_keys:
        raise FtexpError(f"the checkpoint does not match the rebuilt model (unexpected "
                         f"{result.unexpected_keys[:3]}); was the base model changed since training?")
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.requires_grad_(False).eval()


def _adapter_state(state_dict: dict[str, Any], prefix: str, decoder: str | None) -> dict[str, Any]:
    """The earlier run's adapter tensors, named as in the PEFT wrapper of this run's model;
    `decoder`: the causal LM's base_model_prefix when this run takes only its transformer (a head
    task from a language-model run), whose names lose it (its LM head's tensors are dropped)."""
    inner = "base_model.model."
    state = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if decoder and name.startswith(inner):
            if not name.startswith(f"{inner}{decoder}."):
                continue  # the LM head's
            name = inner + name[len(f"{inner}{decoder}."):]
        state[name] = value
    return state


def load_starting_network(model: dict[str, Any], quantization_config: Any = None, causal_lm: bool = False):
    """The network a model group starts a run from: its base (backbone.load_configured_backbone),
    or, with model.init_from, the earlier run's network (load_init_from)."""
    if model.get("init_from"):
        return load_init_from(model, quantization_config, causal_lm)
    from ftexp.builders.backbone import load_configured_backbone

    return load_configured_backbone(model, quantization_config, causal_lm)


def load_init_from(model: dict[str, Any], quantization_config: Any = None, causal_lm: bool = False):
    """load_starting_network for a model group with init_from: the earlier run's network
    (merged, or its unmerged base with the adapter state pending for `continue`), headless when
    this run's task has a head and that run trained a language model, quantized if asked."""
    from ftexp.builders.adapter import expect_adapter_state
    from ftexp.builders.backbone import load_backbone
    from ftexp.predict import load_checkpoint

    run = finished_run(model["init_from"])
    saved = load_checkpoint(run / run_dir.BEST_CHECKPOINT)
    hparams = saved["hyper_parameters"]
    was_lm = _is_language_model(hparams)
    if causal_lm and not was_lm:
        raise ConfigError(f"model.init_from={model['init_from']} is a task={hparams['task']['name']} "
                          "run, which has no language-model head; this task needs one.")
    method = hparams["adapter"]["method"]
    state = None
    if model.get("init_from_adapter") == "continue" and method not in NON_PEFT_ADAPTERS:
        # The base that run's adapter trained on, as this run loads it; the adapter comes later.
        then = {**hparams["model"], "dtype": model["dtype"],
                "attn_implementation": model.get("attn_implementation")}
        network = load_starting_network(then, None, causal_lm=was_lm)
        expect_adapter_state(network, None)  # its own init_from's adapter: superseded by this one
        state = saved["state_dict"]
    else:
        # A weight adapter merged (or none to merge: full / freeze tuning, whose weights it is).
        network = merged_network(hparams, saved["state_dict"], model["dtype"], causal_lm=was_lm)
        network.requires_grad_(True)  # as from_pretrained leaves it: this run's adapter decides
    decoder = None
    if was_lm and not causal_lm:
        decoder = network.base_model_prefix
        network = network.base_model  # the transformer AutoModel would load (LlamaModel, …)
    if quantization_config is not None:
        # bitsandbytes quantizes while loading weights, so the network goes through disk.
        with tempfile.TemporaryDirectory() as tmp:
            network.save_pretrained(tmp)
            network = load_backbone(tmp, dtype=model["dtype"], causal_lm=causal_lm,
                                    attn_implementation=model.get("attn_implementation"),
                                    quantization_config=quantization_config)
    if state is not None:
        expect_adapter_state(network, _adapter_state(state, _network_prefix(was_lm), decoder))
    return network
