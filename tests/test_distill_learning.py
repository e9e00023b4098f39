"""Distillation transfers what the data lacks (slow tier). The student's data is the evaluation
demo's SFT file, which answers every colour prompt with every one of the 10 colours: trained on it
alone, a student learns the answer's form and not which colour is true (chance, 0.1). A teacher
trained on the true colours knows; a student of the same size distilled from it on the same
uninformative data — off-policy (the data's responses) or half on-policy (its own samples) —
reaches the teacher's exact-match on held-out prompts (phrasing-and-thing pairs neither model
was trained on), while the student trained the same steps without the teacher stays near chance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose_config, learning_seed

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "eval_demo"
BENCHMARK_ITEMS = ROOT / "src" / "ftexp" / "evaluation" / "tasks" / "data" / "colours.jsonl"
COMMON = ["model=tiny_llama", "adapter=none", "data.split_column=split", "data.text_columns=[prompt]",
          "data.label_column=response", "data.prompt_template='{prompt} '",
          "data.response_template='{response}'", "data.max_length=32", "data.batch_size=16",
          "data.eval_batch_size=64", "optimizer.learning_rate=5e-3", "trainer.precision=32",
          "trainer.enable_progress_bar=false", "task.sample_generations=0"]
STUDENT = [*COMMON, f"data.path={DEMO / 'colour_sft.jsonl'}", "trainer.max_epochs=3"]


def _true_colours() -> dict[tuple[str, str], str]:
    """(prompt, split) → the true colour, from the demo's preference file (chosen = true)."""
    rows = [json.loads(line) for line in (DEMO / "colour_prefs.jsonl").read_text().splitlines()]
    return {(r["prompt"], r["split"]): r["chosen"] for r in rows}


def _held_out() -> list[tuple[str, str]]:
    """Prompts no run trains on: the demo's validation prompts and the benchmark's test items."""
    validation = [(p, c) for (p, split), c in _true_colours().items() if split == "validation"]
    items = [json.loads(line) for line in BENCHMARK_ITEMS.read_text().splitlines()]
    return validation + [(i["question"], i["choices"][i["gold"]]) for i in items if i["split"] == "test"]


def _exact_match(run: Path) -> float:
    from ftexp.generate import RunGenerator

    generator = RunGenerator(run, {"max_new_tokens": 4, "do_sample": False})
    held_out = _held_out()
    answers = generator.generate([{"prompt": prompt} for prompt, _ in held_out])
    return sum(a.strip() == colour for a, (_, colour) in zip(answers, held_out, strict=True)) / len(held_out)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> tuple[Path, float]:
    from ftexp.train import train

    root = tmp_path_factory.mktemp("kd")
    facts = root / "true_colours.jsonl"
    facts.write_text("".join(json.dumps({"prompt": p, "response": c, "split": s}) + "\n"
                             for (p, s), c in _true_colours().items()))
    train(compose_config(["task=causal_lm", *COMMON, f"data.path={facts}", "trainer.max_epochs=20",
                          f"seed={learning_seed()}"], output_dir=root / "teacher"))
    return root / "teacher", _exact_match(root / "teacher")


@pytest.fixture(scope="module")
def without_teacher(teacher, tmp_path_factory) -> float:
    from ftexp.train import train

    out = tmp_path_factory.mktemp("kd") / "sft"
    train(compose_config(["task=causal_lm", *STUDENT, f"seed={learning_seed(7)}"], output_dir=out))
    return _exact_match(out)


@pytest.mark.parametrize("on_policy", [0.0, 0.5], ids=["off_policy", "half_on_policy"])
def test_a_distilled_student_learns_the_teachers_answers_the_data_lacks(teacher, without_teacher, on_policy,
                                                                       tmp_path, margin):
    from ftexp.train import train

    teacher_run, teacher_em = teacher
    margin.at_least("teacher's held-out exact-match", teacher_em, 0.8)
    train(compose_config(["task=distill", *STUDENT, f"task.teacher={teacher_run}", "task.beta=0.0",
                          f"task.on_policy_fraction={on_policy}", "generation.max_new_tokens=4",
                          f"seed={learning_seed(7)}"], output_dir=tmp_path / "student"))
    student_em = _exact_match(tmp_path / "student")
    margin.at_most("teacher's exact-match - the student's", teacher_em - student_em, 0.1,
                   (teacher_em, student_em))
    # Same size, same data, same steps, no teacher: the data alone says nothing about the colour.
    margin.at_most("exact-match without the teacher", without_teacher, 0.3, without_teacher)
    if on_policy:
        metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
        assert 0 < metrics["on_policy_batches"] < metrics["global_steps"]
