"""Preference tasks (dpo / simpo / orpo / kto / reward) built on the registry: batches that hold a
prompt once and both responses in one forward pass, truncation that keeps the responses, the
reference policy without a second copy of the weights, precomputed reference log-probs that a
second run reads from the cache, reward scores that survive predict and export, and one-line
errors for what cannot work."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import (
    assert_one_line,
    build_task,
    colour_preferences,
    preference_overrides,
    run_in_process,
)
from ftexp.data.preference import PreferencePair
from ftexp.data.preference_batches import (
    PreferenceEncoder,
    collate_pairs,
    encode_pairs,
    fit_lengths,
)
from ftexp.tasks.preference_losses import dpo_loss, orpo_loss, sequence_logps


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    return colour_preferences(tmp_path_factory.mktemp("pref") / "colours.jsonl")


@pytest.fixture(scope="module")
def unpaired_file(tmp_path_factory) -> Path:
    return colour_preferences(tmp_path_factory.mktemp("kto") / "colours.jsonl", paired=False)




# -- batches ----------------------------------------------------------------------------------------

def test_a_pair_is_one_prompt_and_two_responses_in_one_batch(minilm_tokenizer):
    calls = []

    class Counting:
        """The tokenizer, counting the texts it is asked to tokenize."""
        def __getattr__(self, name):
            return getattr(minilm_tokenizer, name)

        def __call__(self, text, **kwargs):
            calls.append(text)
            return minilm_tokenizer(text, **kwargs)

    from ftexp.data.causal_lm import ensure_eos

    ensure_eos(minilm_tokenizer)
    encoder = PreferenceEncoder(Counting(), prompt_template=None)
    pairs = [(1, PreferencePair("the sky is", "blue", "green")),
             (2, PreferencePair("a long prompt about the colour of snow is", "white", "dark grey"))]
    rows, cut, dropped = encode_pairs(encoder, pairs, max_length=64, max_prompt_length=None, policy="cut")
    assert calls.count("the sky is") == 1 and (cut, dropped) == (0, 0)
    batch = collate_pairs(rows, pad_id=0)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape[0] == 4  # chosen of both pairs, then rejected of both
    for i, row in enumerate(rows):
        n = len(row["prompt"])
        for j, response in ((i, row["chosen"]), (i + 2, row["rejected"])):
            assert ids[j, :n].tolist() == row["prompt"]          # the same prompt ids
            assert (labels[j, :n] == -100).all()                 # not trained
            assert labels[j, n:n + len(response)].tolist() == response
            assert response[-1] == minilm_tokenizer.sep_token_id  # ends with EOS ([SEP] here)
            assert mask[j].sum() == n + len(response) and (labels[j, n + len(response):] == -100).all()


def test_truncation_keeps_the_responses_and_the_end_of_the_prompt():
    prompt, responses = list(range(100)), [[1000 + i for i in range(10)], [2000, 2001]]
    kept, (chosen, rejected), cut = fit_lengths(prompt, responses, max_length=40, max_prompt_length=None)
    assert cut and kept == list(range(70, 100)) and chosen == responses[0] and rejected == responses[1]
    kept, _, _ = fit_lengths(prompt, responses, max_length=200, max_prompt_length=16)
    assert kept == list(range(84, 100))
    # A response longer than the room left: the prompt keeps half of max_length, the response its start.
    kept, (long, _), _ = fit_lengths(prompt, [list(range(500, 560)), [1]], max_length=40,
                                     max_prompt_length=None)
    assert kept == list(range(80, 100)) and long == list(range(500, 520))
    assert fit_lengths([1, 2], [[3]], 10, None)[2] is False


def test_a_kto_example_keeps_its_prompt_whatever_completion_it_borrows(minilm_tokenizer):
    from ftexp.data.causal_lm import ensure_eos
    from ftexp.data.preference import PreferenceExample
    from ftexp.data.preference_batches import encode_unpaired

    ensure_eos(minilm_tokenizer)
    encoder = PreferenceEncoder(minilm_tokenizer, prompt_template=None)
    examples = [(1, PreferenceExample("what colour is the sky?", "blue", True)),
                (2, PreferenceExample("and grass?", " ".join(["green"] * 40), False))]
    rows, cut, dropped = encode_unpaired(encoder, examples, max_length=24, max_prompt_length=None,
                                         policy="drop", seed=0)
    # The first example fits alone: it is neither cut nor dropped for its partner's long answer,
    # whose borrowed copy gets the room left; the second does not fit and is dropped.
    assert (cut, dropped) == (0, 1) and [r["record"] for r in rows] == [1]
    first = rows[0]
    assert first["prompt"] == encoder.prompt_ids("what colour is the sky?")
    assert len(first["prompt"]) + len(first["kl_completion"]) == 24
    assert encode_unpaired(encoder, [], 24, None, "cut", 0) == ([], 0, 0)  # an empty split is no error


def test_kto_trains_on_paired_data_unpaired_and_without_a_test_split(pairs_file, tmp_path):
    task, datamodule, _ = build_task(preference_overrides(
        pairs_file, "kto", "data.preference.unpair=true", "data.split_column=null",
        "data.split_probabilities=[0.8,0.2,0.0]"), tmp_path)
    pairs = len(pd.read_json(pairs_file, lines=True))
    sizes = {split: len(rows) for split, rows in datamodule.datasets.items()}
    assert sizes["test"] == 0 and sizes["train"] + sizes["validation"] == 2 * pairs
    desirable = [r["desirable"] for r in datamodule.datasets["train"].rows]
    assert desirable.count(True) == desirable.count(False)


def test_kto_examples_get_another_examples_completion_for_the_kl_estimate(unpaired_file, tmp_path):
    task, datamodule, _ = build_task(preference_overrides(unpaired_file, "kto"), tmp_path)
    rows = datamodule.datasets["train"].rows
    completions = [r["completion"] for r in rows]
    assert all(r["kl_completion"] in completions for r in rows)
    # Mismatched: never the example's own completion row (a derangement of the split).
    own = sum(r["kl_completion"] is r["completion"] for r in rows)
    assert own == 0 and {r["desirable"] for r in rows} == {True, False}


# -- the reference policy ------------------------------------------------------------------------------

def test_orpo_nll_is_the_chosen_responses_or_with_nll_on_prompt_their_prompts_too(pairs_file, tmp_path,
                                                                                  monkeypatch):
    """The NLL term of task=orpo by hand from full logits: the token mean over the chosen
    responses (the paper's), or over every chosen token but the first (TRL's ORPOTrainer); the
    odds ratio on the responses' mean log-probs either way."""
    task, datamodule, _ = build_task(preference_overrides(pairs_file, "orpo"), tmp_path)
    datamodule.setup("fit")
    batch = datamodule.collate(datamodule.datasets["train"].rows[:3])
    task.eval()
    with torch.no_grad():
        logits = task.network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        next_ids = batch["input_ids"][:, 1:, None]
        token = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, next_ids)[..., 0]
        response = (batch["labels"][:, 1:] != -100).double()
        attended = batch["attention_mask"][:, 1:].double()
        sums, counts = (token * response).sum(-1), response.sum(-1)
        avg_c, avg_r = (sums / counts).chunk(2)
        assert (attended - response)[:3].sum() > 0  # the prompts have tokens to add
        got, nlls = {}, {}
        for on_prompt, keep in ((False, response), (True, attended)):
            nlls[on_prompt] = -(token[:3] * keep[:3]).sum() / keep[:3].sum()
            expected = orpo_loss(avg_c, avg_r, nlls[on_prompt], beta=task.hparams.task["beta"]).losses.mean()
            monkeypatch.setitem(task.hparams.task, "nll_on_prompt", on_prompt)
            got[on_prompt] = task.loss_and_metrics(batch)[0].mean().item()
            assert got[on_prompt] == pytest.approx(expected.item(), rel=1e-5), on_prompt
        # The modes differ by exactly the difference of their NLLs (the odds ratio is shared).
        difference = (nlls[True] - nlls[False]).item()
        assert abs(difference) > 1e-3
        assert got[True] - got[False] == pytest.approx(difference, rel=1e-3)


def test_lora_dpo_keeps_one_copy_of_the_base_and_its_reference_is_the_base(pairs_file, tmp_path):
    from ftexp.builders.backbone import load_configured_backbone

    # LoRA dropout at 0.5: task.disable_dropout (default) must keep both passes deterministic.
    task, datamodule, cfg = build_task(preference_overrides(pairs_file, "dpo", "adapter=lora",
                                                       "adapter.lora_dropout=0.5"), tmp_path)
    assert task.reference_mode == "adapter" and task._reference_copy == []
    base = load_configured_backbone(task.hparams.model, causal_lm=True)
    base_count = sum(p.numel() for p in base.parameters())
    adapter_count = sum(p.numel() for p in task.parameters() if p.requires_grad)
    # Every parameter the task holds: the base once, plus the LoRA matrices.
    assert sum(p.numel() for p in task.parameters()) == base_count + adapter_count
    with torch.no_grad():  # make the adapter matter, so "disabled" is observable
        for name, p in task.network.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    assert task.network.training  # train mode, as in a training step
    batch = datamodule.collate(datamodule.datasets["validation"].rows[:4])
    reference = task.reference_logps(batch)
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = sequence_logps(logits, batch["labels"])[0]
        policy = task._logps(task.network, batch)[0]
    torch.testing.assert_close(reference, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(policy, expected)  # the adapter is on for the policy
    # The task's loss is dpo_loss on these log-probs, from one policy and one reference pass,
    # each over all 2B sequences (chosen and rejected together).
    seen = []
    hook = task.network.register_forward_hook(lambda module, args, kwargs, out: seen.append(
        (kwargs["input_ids"].shape[0], torch.is_grad_enabled())), with_kwargs=True)
    losses, metrics = task.loss_and_metrics(batch)
    hook.remove()
    assert sorted(seen) == [(8, False), (8, True)]
    pc, pr = policy.chunk(2)
    rc, rr = expected.chunk(2)
    want = dpo_loss(pc, pr, rc, rr, beta=cfg.task.beta, loss_type="sigmoid")
    torch.testing.assert_close(losses.detach(), want.losses, rtol=1e-5, atol=1e-6)
    right = (want.chosen_rewards > want.rejected_rewards).float().mean()
    assert metrics["rewards/accuracy"][0] == pytest.approx(float(right))
    assert task.reference_forward_passes == 2  # the one above, and the one inside the loss


def test_full_fine_tuning_keeps_a_frozen_copy_out_of_checkpoints_and_the_optimizer(pairs_file, tmp_path):
    task, _, _ = build_task(preference_overrides(pairs_file, "dpo", "adapter=none"), tmp_path)
    assert task.reference_mode == "copy" and len(task._reference_copy) == 1
    copy = task._reference_copy[0]
    assert not any(p.requires_grad for p in copy.parameters())
    held = {id(p) for p in task.parameters()}
    assert not any(id(p) in held for p in copy.parameters())
    assert all(k.startswith(("network.", "eval_metrics.", "train_loss")) for k in task.state_dict())
    assert len(task.state_dict()) < 2 * len(copy.state_dict())


def test_precomputed_references_train_like_a_copy_and_a_second_run_does_no_reference_pass(
        pairs_file, tmp_path, monkeypatch, capsys):
    base = preference_overrides(pairs_file, "dpo", "adapter=none", "trainer.max_steps=4",
                                "trainer.val_check_interval=4", "callbacks.checkpoint=false")
    outcomes = {}
    for name, extra in (("copy", ["task.reference=copy"]), ("first", ["task.reference=precompute"]),
                        ("second", ["task.reference=precompute", "task.beta=0.5"])):
        run = tmp_path / name
        code, err = run_in_process([*base, *extra, f"paths.output_dir={run}"], monkeypatch, capsys)
        assert code == 0, err[-2000:]
        outcomes[name] = json.loads((run / "metrics.json").read_text())
    assert outcomes["copy"]["reference_forward_passes"] > 0
    assert outcomes["first"]["reference_forward_passes"] > 0      # computed once, before training
    assert outcomes["second"]["reference_forward_passes"] == 0    # the same data and base: cached
    for key in ("val/loss", "val/rewards/margin", "test/logps/chosen"):
        assert outcomes["first"][key] == pytest.approx(outcomes["copy"][key], rel=1e-4, abs=1e-6), key
    assert outcomes["second"]["val/loss"] != pytest.approx(outcomes["first"]["val/loss"])  # beta differs


# -- reward models ----------------------------------------------------------------------------------

def test_a_reward_run_scores_files_and_exports_a_sequence_classifier_with_the_same_scores(
        pairs_file, tmp_path, monkeypatch, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ftexp.export import export_run
    from ftexp.predict import predict_file

    run = tmp_path / "reward"
    code, err = run_in_process([*preference_overrides(pairs_file, "reward", "adapter=lora",
                                                      "trainer.max_steps=3", "optimizer.learning_rate=1e-2"),
                                f"paths.output_dir={run}"], monkeypatch, capsys)
    assert code == 0, err[-2000:]
    test_scores = pd.read_csv(run / "predictions_test.csv")
    test_pairs = pd.read_json(pairs_file, lines=True).query("split == 'test'")
    assert {"score_chosen", "score_rejected"} <= set(test_scores.columns)
    assert test_scores.prompt.tolist() == test_pairs.prompt.tolist()  # one row per test pair, in order
    rows = pd.DataFrame({"prompt": ["the colour of snow is", "what colour is coal?"],
                         "response": ["white", "pink"]})
    rows.to_csv(tmp_path / "rows.csv", index=False)
    scored = predict_file(run, tmp_path / "rows.csv", tmp_path / "scores.csv")
    assert scored["score"].notna().all() and scored["score"].nunique() == 2
    # The test pair scored through predict equals the run's own test score.
    first = test_scores.iloc[0]
    again = predict_file(run, _one_row(tmp_path, first.prompt, first.chosen), tmp_path / "again.csv")
    assert again["score"][0] == pytest.approx(first.score_chosen, rel=1e-4, abs=1e-5)

    # The same run as a GRPO reward (ftexp.tasks.rewards.reward_model) gives the same scores.
    from ftexp.tasks.rewards import build_reward

    as_reward = build_reward("ftexp.tasks.rewards.reward_model", run=str(run))
    assert as_reward(rows.prompt.tolist(), rows.response.tolist()) == pytest.approx(scored.score.tolist(),
                                                                                    rel=1e-4, abs=1e-5)
    # A policy's sample that ended at once (empty; a file's empty row is refused, below) is scored:
    # the reward model's score of the prompt's tokens alone.
    [empty] = as_reward(["what colour is coal?"], [""])

    exported = export_run(run, tmp_path / "export", dtype="float32")
    model = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert model.config.num_labels == 1
    for prompt, response, score in zip(rows.prompt, rows.response, scored.score, strict=True):
        # The tokens ftexp scores: the prompt's, then the response's (this vocabulary has no BOS).
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (prompt, response)]
        with torch.no_grad():
            logit = model(input_ids=torch.tensor([ids[0] + ids[1]])).logits[0, 0]
        assert float(logit) == pytest.approx(score, rel=1e-4, abs=1e-5)
    with torch.no_grad():
        ids = tokenizer("what colour is coal?", add_special_tokens=False)["input_ids"]
        prompt_only = model(input_ids=torch.tensor([ids])).logits[0, 0]
    assert empty == pytest.approx(float(prompt_only), rel=1e-4, abs=1e-5)


def test_scoring_a_row_without_a_response_names_the_row(pairs_file, tmp_path, monkeypatch, capsys):
    from ftexp.predict import predict_file
    from ftexp.runs.errors import DataError

    run = tmp_path / "reward"
    args = preference_overrides(pairs_file, "reward", "adapter=lora", "trainer.max_steps=1")
    code, err = run_in_process([*args, f"paths.output_dir={run}"], monkeypatch, capsys)
    assert code == 0, err[-2000:]
    rows = tmp_path / "rows.csv"
    pd.DataFrame({"prompt": ["a", "b"], "response": ["white", None]}).to_csv(rows, index=False)
    with pytest.raises(DataError, match="^row 2: 'response' has no value"):
        predict_file(run, rows, tmp_path / "scores.csv")
    assert not (tmp_path / "scores.csv").exists()


def _one_row(tmp_path: Path, prompt: str, response: str) -> Path:
    path = tmp_path / "one.csv"
    pd.DataFrame({"prompt": [prompt], "response": [response]}).to_csv(path, index=False)
    return path


# -- errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    (["task=dpo", "adapter=none", "task.reference=adapter"],
     "task.reference=adapter disables the PEFT adapter"),
    (["task=dpo", "task.loss_type=ipo", "task.label_smoothing=0.1"],
     "'task.label_smoothing=0.1' has no effect with loss_type=ipo"),
    (["task=dpo", "task.loss_type=sigmod"], "'task.loss_type=sigmod' is not a valid choice. Did you mean"),
    (["task=dpo", "task.gamma=0.5"], "task.gamma is a setting of task=simpo / ppo, not task=dpo"),
    (["task=orpo", "data.packing=true"], "data.packing=true applies to task=causal_lm / pretrain"),
    (["task=kto", "adapter=lora", "strategy=fsdp", "task.reference=copy"],
     "task.reference=copy keeps a whole"),
    (["task=dpo", "data.max_prompt_length=64"], "data.max_prompt_length=64 must be at least 1 and below"),
    (["task=dpo", "adapter=lora", "adapter.init_lora_weights=pissa"],
     "adapter.init_lora_weights=pissa changes the base weights"),
])
def test_impossible_preference_settings_are_refused_in_one_line(pairs_file, extra, message, monkeypatch,
                                                                 capsys, tmp_path):
    args = [*preference_overrides(pairs_file, "dpo")[1:], *extra, f"paths.output_dir={tmp_path / 'run'}"]
    code, err = run_in_process(args, monkeypatch, capsys)
    assert code != 0
    assert_one_line(err, message)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_unpaired_data_for_a_paired_task_names_the_fix(unpaired_file, monkeypatch, capsys, tmp_path):
    code, err = run_in_process([*preference_overrides(unpaired_file, "dpo"),
                                f"paths.output_dir={tmp_path / 'run'}"], monkeypatch, capsys)
    assert code != 0
    assert_one_line(err, "unpaired")


# -- as a new user runs it ----------------------------------------------------------------------------

@pytest.mark.parametrize(("task", "data"), [("dpo", "dpo_demo"), ("kto", "kto_demo")])
def test_the_shipped_demo_data_train_then_generate_and_export(task, data, tmp_path, monkeypatch, capsys):
    """The shipped LLaMA-Factory samples (conversations) through task=dpo / kto with LoRA, then
    generate renders a new prompt through the chat template as training did, and export writes a
    model transformers loads."""
    from transformers import AutoModelForCausalLM

    from ftexp.export import export_run
    from ftexp.generate import RunGenerator

    run = tmp_path / task
    code, err = run_in_process([f"task={task}", "model=tiny_llama", "adapter=lora", f"data={data}",
                                "data.max_length=96", "data.max_prompt_length=48", "trainer.max_steps=2",
                                "trainer.precision=32", "task.sample_generations=1",
                                "generation.max_new_tokens=4", "trainer.enable_progress_bar=false",
                                f"paths.output_dir={run}"], monkeypatch, capsys)
    assert code == 0, err[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["val/rewards/accuracy"] <= 1 and metrics["reference"] == "adapter"
    assert (run / "generations.jsonl").read_text().count("\n") >= 1  # sample generations as in SFT
    generator = RunGenerator(run, {"max_new_tokens": 3})
    chat = [{"role": "user", "content": "Name a colour."}]
    expected = generator.tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert generator.prompt_ids({"prompt": "Name a colour."}) == expected
    assert isinstance(generator.generate([{"prompt": "Name a colour."}])[0], str)
    model = AutoModelForCausalLM.from_pretrained(export_run(run, tmp_path / "export", dtype="float32"))
    assert model.config.model_type == "llama"
