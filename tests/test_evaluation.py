"""Benchmark evaluation (the `eval` group, ftexp.evaluate): the same items and scores as the
`lm_eval` command on an exported model, the in-process evaluation at the end of a run equal to
evaluating its export, classifiers scored on another labelled file, a base model's eval dir, and
bad input refused in one line before any model loads."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import assert_one_line, compose_config, run_in_process, tiny_overrides

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TASKS = ROOT / "src" / "ftexp" / "evaluation" / "tasks"
TASKS = ["ftexp_colours_mc", "ftexp_sums_gen"]
# One few-shot example and 12 items a task: both the harness's paths (few-shot sampling, --limit).
HARNESS_SETTINGS = ["eval.num_fewshot=1", "eval.limit=12"]


def _lm_overrides(*extra: str) -> list[str]:
    """Tiny random-init Llama, one epoch of the demo's SFT data, both shipped tasks evaluated."""
    return ["model=tiny_llama", "task=causal_lm", f"data.path={ROOT / 'data/eval_demo/colour_sft.jsonl'}",
            "data.split_column=split", "data.text_columns=[prompt]", "data.label_column=response",
            "data.prompt_template='{prompt} '", "data.response_template='{response}'",
            "data.max_length=32", "data.batch_size=32", "optimizer.learning_rate=5e-3",
            "trainer.max_epochs=1", "trainer.precision=32", "trainer.enable_progress_bar=false",
            "task.sample_generations=0", "eval=lm_eval", f"eval.tasks=[{','.join(TASKS)}]",
            *HARNESS_SETTINGS, *extra]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    from ftexp.train import train

    out = tmp_path_factory.mktemp("eval") / "run"
    train(compose_config(_lm_overrides("adapter=lora"), output_dir=out))
    return out


@pytest.fixture(scope="module")
def exported(lora_run: Path) -> Path:
    from ftexp.export import export_run

    return export_run(lora_run, lora_run.parent / "export", dtype="float32")


@pytest.fixture(scope="module")
def export_eval(exported: Path) -> Path:
    """ftexp.evaluate on the export: scores in an eval dir."""
    from ftexp.evaluate import evaluate_target

    out, _ = evaluate_target(str(exported), [f"eval.tasks=[{','.join(TASKS)}]", *HARNESS_SETTINGS],
                             exported.parent / "export_eval")
    return out


def _ours(out: Path, task: str) -> tuple[dict, list[dict]]:
    results = json.loads((out / "eval" / "results.json").read_text())["tasks"][task]
    items = [json.loads(line) for line in (out / "eval" / f"{task}.jsonl").read_text().splitlines()]
    return results, items


def _score_name(task: str) -> str:
    return "acc" if task == "ftexp_colours_mc" else "exact_match"


def _as_written_by_lm_eval(value):
    """lm-eval's sample files hold every response as its str() (its evaluation tracker's
    serializer); ftexp's keep the numbers and booleans."""
    if isinstance(value, (list, tuple)):
        return [_as_written_by_lm_eval(v) for v in value]
    return value if isinstance(value, str) else str(value)


def test_ftexp_evaluate_gives_the_lm_eval_commands_items_and_scores(exported: Path, export_eval: Path,
                                                                    tmp_path: Path):
    cli = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", f"pretrained={exported}",
         "--tasks", ",".join(TASKS), "--num_fewshot", "1", "--limit", "12", "--batch_size", "1",
         "--device", "cpu", "--include_path", str(SHIPPED_TASKS), "--log_samples",
         "--output_path", str(tmp_path / "cli")],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert cli.returncode == 0, cli.stderr[-3000:]
    [results_file] = glob.glob(str(tmp_path / "cli" / "*" / "results_*.json"))
    theirs = json.loads(Path(results_file).read_text())
    for task in TASKS:
        results, items = _ours(export_eval, task)
        metric = _score_name(task)
        cli_metric = f"{metric},{'none' if task == 'ftexp_colours_mc' else 'strip'}"
        assert results["metrics"][metric] == theirs["results"][task][cli_metric]
        assert results["n_samples"] == theirs["n-samples"][task]["effective"] == 12
        assert results["num_fewshot"] == theirs["n-shot"][task] == 1
        [samples_file] = glob.glob(str(tmp_path / "cli" / "*" / f"samples_{task}_*.jsonl"))
        cli_items = sorted((json.loads(line) for line in Path(samples_file).read_text().splitlines()),
                           key=lambda s: s["doc_id"])
        assert [i["doc_id"] for i in items] == [s["doc_id"] for s in cli_items]
        for ours, cli_item in zip(items, cli_items, strict=True):
            # the prompt with its few-shot example, the model's answers, their scores: all identical
            assert ours["prompt_hash"] == cli_item["prompt_hash"] and ours["doc_hash"] == cli_item["doc_hash"]
            cli_arguments = [list(a.values()) for a in cli_item["arguments"].values()]
            assert [list(a) for a in ours["arguments"]] == cli_arguments
            assert _as_written_by_lm_eval(ours["resps"]) == cli_item["resps"]
            assert _as_written_by_lm_eval(ours["filtered_resps"]) == cli_item["filtered_resps"]
            assert ours[metric] == cli_item[metric]
    metrics = json.loads((export_eval / "metrics.json").read_text())
    assert metrics["kind"] == "evaluation" and metrics["group"] == f"base:{exported}"


def test_the_runs_own_evaluation_equals_evaluating_its_export(lora_run: Path, export_eval: Path):
    """In process at the end of the LoRA run (the PEFT model as trained, adapter not merged) and
    on the merged float32 export: the same answers, log-likelihoods equal up to rounding."""
    run_metrics = json.loads((lora_run / "metrics.json").read_text())
    for task in TASKS:
        run_results, run_items = _ours(lora_run, task)
        export_results, export_items = _ours(export_eval, task)
        metric = _score_name(task)
        assert run_metrics[f"eval/{task}/{metric}"] == run_results["metrics"][metric] == \
            export_results["metrics"][metric]
        assert [i["arguments"] for i in run_items] == [i["arguments"] for i in export_items]
        assert [i[metric] for i in run_items] == [i[metric] for i in export_items]
        if task == "ftexp_colours_mc":  # [[log-likelihood, is greedy]] per choice
            for ours, theirs in zip(run_items, export_items, strict=True):
                assert [r[0][1] for r in ours["resps"]] == [r[0][1] for r in theirs["resps"]]
                assert [r[0][0] for r in ours["resps"]] == pytest.approx([r[0][0] for r in theirs["resps"]],
                                                                         abs=1e-4)
        else:
            assert [i["resps"] for i in run_items] == [i["resps"] for i in export_items]
    assert "eval/ftexp_colours_mc/acc_stderr" in run_metrics


def test_a_base_model_is_evaluated_into_an_eval_dir_the_report_reads(tmp_path: Path):
    from omegaconf import OmegaConf

    from ftexp.evaluate import evaluate_target

    out, metrics = evaluate_target("model=tiny_llama", ["eval.tasks=[ftexp_colours_mc]", "eval.limit=8"],
                                   tmp_path / "base")
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kind"] == "evaluation" and saved["group"] == "base:model=tiny_llama"
    assert saved["eval/ftexp_colours_mc/acc"] == metrics["eval/ftexp_colours_mc/acc"]
    cfg = OmegaConf.load(out / "config.yaml")
    assert cfg.model.random_init.model_type == "llama" and cfg.eval.tasks == ["ftexp_colours_mc"]
    # a random-init option builds the same weights every time: the start of every run from it
    again, _ = evaluate_target("model=tiny_llama", ["eval.tasks=[ftexp_colours_mc]", "eval.limit=8"],
                               tmp_path / "again")
    first, second = _ours(out, "ftexp_colours_mc")[1], _ours(again, "ftexp_colours_mc")[1]
    assert [i["resps"] for i in first] == [i["resps"] for i in second]


def test_a_classifier_is_scored_on_another_labelled_file(toy_csv: Path, tmp_path: Path):
    from conftest import sentiment_rows
    from ftexp.evaluate import evaluate_target
    from ftexp.train import train

    run = tmp_path / "run"
    train(compose_config(tiny_overrides(toy_csv, "trainer.max_epochs=1"), output_dir=run))
    other = tmp_path / "other.csv"
    sentiment_rows(40, seed=11).to_csv(other, index=False)
    out, metrics = evaluate_target(str(run), [f"data.path={other}"])
    assert out == run
    predictions = pd.read_csv(run / "eval" / "other_predictions.csv")
    truth = pd.read_csv(other)["label"].astype(str)
    accuracy = float((predictions["predicted_label"].astype(str) == truth).mean())
    assert metrics["eval/other/acc"] == pytest.approx(accuracy)
    results, items = _ours(run, "other")
    assert len(items) == 40 and sum(i["acc"] for i in items) == pytest.approx(40 * accuracy)
    assert sum(map(sum, results["confusion"])) == 40 and results["higher_is_better"]["acc"]
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["eval/other/f1_macro"] == metrics["eval/other/f1_macro"]


def test_shipped_tasks_and_demo_data_are_what_the_script_makes(tmp_path: Path, monkeypatch):
    """Regenerating writes the same bytes, and no benchmark question is a training prompt (the
    demo measures generalisation to new phrasing-and-thing pairs, not recall)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_eval_demo", ROOT / "scripts" / "make_eval_demo.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "TASK_DATA", tmp_path / "tasks")
    monkeypatch.setattr(script, "DEMO_DATA", tmp_path / "demo")
    script.main()
    shipped = {"tasks/colours.jsonl": SHIPPED_TASKS / "data" / "colours.jsonl",
               "tasks/sums.jsonl": SHIPPED_TASKS / "data" / "sums.jsonl",
               "demo/colour_sft.jsonl": ROOT / "data" / "eval_demo" / "colour_sft.jsonl",
               "demo/colour_prefs.jsonl": ROOT / "data" / "eval_demo" / "colour_prefs.jsonl"}
    for name, path in shipped.items():
        assert (tmp_path / name).read_bytes() == path.read_bytes(), name
    rows = [json.loads(line) for line in shipped["tasks/colours.jsonl"].read_text().splitlines()]
    questions = {row["question"] for row in rows if row["split"] == "test"}
    pairs = shipped["demo/colour_prefs.jsonl"].read_text().splitlines()
    trained = {json.loads(line)["prompt"] for line in pairs}
    assert len(questions) == 36 and not questions & trained


def test_a_decoder_tokenizer_encodes_a_plain_call_as_training_does(minilm_tokenizer, tmp_path: Path):
    """lm-eval calls `tokenizer(text)`: for the tiny decoders' BERT vocabulary that would wrap
    every prompt in [CLS] … [SEP], which training never showed the model."""
    from transformers import AutoTokenizer

    from ftexp.data.causal_lm import bos_prefix, decoder_tokenizer

    text = "the colour of coal is black"
    trained = bos_prefix(minilm_tokenizer) + minilm_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert minilm_tokenizer(text)["input_ids"] != trained  # [CLS] … [SEP]
    wrapped = decoder_tokenizer(minilm_tokenizer)
    assert wrapped(text)["input_ids"] == trained
    wrapped.save_pretrained(tmp_path / "tok")
    assert AutoTokenizer.from_pretrained(tmp_path / "tok")(text)["input_ids"] == trained
    assert decoder_tokenizer(wrapped) is wrapped  # already right: returned as it is


# -- bad input: one line, before any model loads -----------------------------------------------------

def _bad_yaml_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "broken.yaml").write_text("task: broken\ndoc_to_text: [unclosed\n")
    return folder


def _hub_task_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hub_tasks"
    folder.mkdir()
    (folder / "hub.yaml").write_text("task: ftexp_hub_only\ndataset_path: ftexp-nobody/not-cached\n"
                                     "output_type: multiple_choice\ntest_split: test\n"
                                     "doc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\ndoc_to_target: 0\n")
    return folder


BAD_INPUTS = {
    "unknown task": (["eval.tasks=[ftexp_colors_mc]"],
                     "unknown eval task 'ftexp_colors_mc'. Did you mean 'ftexp_colours_mc'?"),
    "negative limit": (["eval.limit=-3"], "eval.limit=-3 must be positive"),
    "no tasks": (["eval.tasks=[]"], "eval=lm_eval needs at least one task"),
    "missing include_path": (["eval.include_path=/nowhere/tasks"],
                             "eval.include_path='/nowhere/tasks' is not a folder"),
    "unparsable task YAML": ([], "does not parse"),
    "Hub data offline": ([], "reads the Hub dataset 'ftexp-nobody/not-cached', which is not in the "
                             "local datasets cache"),
    "a classifier": ([], "eval=lm_eval scores language models"),
    "prompt tuning": (["adapter=prompt_tuning"], "eval=lm_eval cannot score adapter=prompt_tuning"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_eval_settings_get_one_line_before_anything_loads(case: str, tmp_path: Path, monkeypatch, capsys):
    extra, message = BAD_INPUTS[case]
    if case == "unparsable task YAML":
        extra = [f"eval.include_path={_bad_yaml_folder(tmp_path)}"]
    if case == "Hub data offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        extra = [f"eval.include_path={_hub_task_folder(tmp_path)}", "eval.tasks=[ftexp_hub_only]"]
    args = _lm_overrides(*extra)
    if case == "a classifier":
        from conftest import sentiment_rows

        sentiment_rows(40).to_csv(tmp_path / "toy.csv", index=False)
        args = tiny_overrides(tmp_path / "toy.csv", "eval=lm_eval", "eval.tasks=[ftexp_colours_mc]")
    out = tmp_path / "run"
    code, stderr = run_in_process([*args, f"hydra.run.dir={out}"], monkeypatch, capsys)
    assert code != 0
    assert_one_line(stderr, message)
    assert not (out / "config.yaml").exists() and not (out / "checkpoints").exists()


def test_a_missing_harness_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    args = [*_lm_overrides(), f"hydra.run.dir={tmp_path / 'run'}"]
    code, stderr = run_in_process(args, monkeypatch, capsys)
    assert code != 0
    assert_one_line(stderr, "pip install 'ftexp[eval]'")
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["model=tiny_llama", "eval.taks=[ftexp_colours_mc]"],
     "unknown config key 'eval.taks'. Did you mean 'eval.tasks'?"),
    (["model=tiny_llama", "eval.tasks=[nope_task]"], "unknown eval task 'nope_task'"),
    (["model=tiny_llama", "optimizer.lr=1"], "'optimizer.lr' cannot be set here"),
    (["model=tiny_llama", "seed=7"], "'seed' cannot be set here"),
    (["model=no_such_model", "eval.tasks=[ftexp_colours_mc]"], "model=no_such_model"),
    ([str(ROOT / "nowhere"), "eval.tasks=[ftexp_colours_mc]"], "cannot load"),
])
def test_ftexp_evaluate_refuses_bad_input_in_one_line(args: list[str], message: str, tmp_path: Path, capsys):
    from ftexp.evaluate import main

    with pytest.raises(SystemExit) as stop:
        main([*args, "-o", str(tmp_path / "out")])
    assert stop.value.code != 0
    assert_one_line(capsys.readouterr().err, message)
    assert not (tmp_path / "out" / "eval").exists()


# -- the demo: evaluation measuring learning (slow tier) ---------------------------------------------

@pytest.mark.slow
@pytest.mark.learning
def test_the_demo_dpo_run_beats_the_base_and_sft_on_the_benchmark(tmp_path: Path, margin):
    """`make eval-demo`: the random-init base and the SFT stage near chance on ftexp_colours_mc, DPO
    from the SFT run far above, and the report calls DPO better than both with p < 0.05."""
    import os
    import re

    from conftest import margins_seed

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    seed = margins_seed([])

    def run(*command: str) -> None:
        done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True,
                              env=env, timeout=900, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-3000:]

    base, sft, dpo = tmp_path / "base", tmp_path / "sft", tmp_path / "dpo"
    run("ftexp.evaluate", "model=tiny_llama", "eval.tasks=[ftexp_colours_mc]", "-o", str(base))
    run("ftexp", "+experiment=tiny_eval_demo_sft", *seed, "trainer.enable_progress_bar=false",
        f"hydra.run.dir={sft}")
    run("ftexp", "+experiment=tiny_eval_demo", *seed, f"model.init_from={sft}",
        "trainer.enable_progress_bar=false", f"hydra.run.dir={dpo}")
    run("ftexp.report", str(base), str(sft), str(dpo), "--out", str(tmp_path / "report"))

    acc = {name: json.loads((path / "metrics.json").read_text())["eval/ftexp_colours_mc/acc"]
           for name, path in (("base", base), ("sft", sft), ("dpo", dpo))}
    margin.at_most("base |acc - chance|", abs(acc["base"] - 0.25), 0.15, acc)
    margin.at_most("sft |acc - chance|", abs(acc["sft"] - 0.25), 0.15, acc)
    margin.at_least("dpo acc", acc["dpo"], 0.9, acc)
    report = (tmp_path / "report" / "report.md").read_text()
    # the report letters them A (base), B (sft), C (dpo)
    for pair in ("A vs C", "B vs C"):
        [sentence] = [line for line in report.splitlines()
                      if line.startswith(f"- {pair}: ") and "ftexp_colours_mc/acc " in line]
        assert sentence.endswith("— C is better."), sentence
        p = re.search(r"McNemar p (?:= ([0-9.]+)|< 0\.001)", sentence)
        assert p and (p.group(1) is None or float(p.group(1)) < 0.05), sentence
