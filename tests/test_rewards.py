"""Built-in reward functions on known answers (malformed completions included), the Reward wrapper's
checks, `build_reward` from config-like nodes, and the shipped arithmetic prompt set."""

from __future__ import annotations

import importlib.util
import json
import math
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest

from conftest import top_level_imports
from ftexp.runs.errors import ConfigError
from ftexp.tasks import rewards
from ftexp.tasks.rewards import (
    Reward,
    RewardError,
    answers_match,
    build_reward,
    exact_match,
    extract_answer,
    format_match,
    length_penalty,
    parse_number,
    token_share,
)

ROOT = Path(__file__).resolve().parents[1]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------
# Extraction and comparison


@pytest.mark.parametrize("text,expected", [
    ("The answer is 42.", "42"),
    ("17 + 25 = 42", "42"),
    ("We have 1,000 apples", "1,000"),
    ("3.14 is pi", "3.14"),
    ("It is -7", "-7"),
    ("5-3", "3"),  # a minus between digits is subtraction, not a sign
    ("version 1.2.3", "1.2"),
    ("1,0000", "0000"),  # not a thousands grouping: "1" then "0000"
    ("first 12 then 7", "7"),
    ("the point (3,4)", "4"),
    ("no digits here", None),
    ("", None),
])
def test_last_number(text, expected):
    assert extract_answer(text, "last_number") == expected


@pytest.mark.parametrize("text,expected", [
    (r"so \boxed{42}", "42"),
    (r"\boxed{\frac{1}{2}} is the answer", r"\frac{1}{2}"),  # nested braces
    (r"\boxed{1} then \boxed{ {2} }", " {2} "),  # the last one
    (r"\boxed{3} and cut at max length \boxed{\frac{1}", "3"),  # an unclosed box is passed over
    (r"\boxed{}", ""),
    ("no box 42", None),
    (r"\boxed{unclosed", None),
])
def test_boxed(text, expected):
    assert extract_answer(text, "boxed") == expected


def test_answer_tag_and_none():
    text = "<think>6 * 7</think>\n<answer>\n 41 </answer> <answer>42</answer>"
    assert extract_answer(text, "answer_tag") == "42"
    assert extract_answer("<answer>multi\nline</answer>", "answer_tag") == "multi\nline"
    assert extract_answer("<answer>42", "answer_tag") is None
    assert extract_answer(" whole ", "none") == " whole "
    with pytest.raises(ConfigError, match="'extract=last'"):
        extract_answer("1", "last")


def test_numbers_compare_by_value():
    assert parse_number("1,000") == parse_number("1000") == parse_number("1000.0") == 1000
    assert parse_number(" $1,000. ") == 1000 and parse_number("50%") == 50
    assert parse_number("3/4") == Fraction(3, 4) and parse_number("-2.5") == Fraction(-5, 2)
    assert parse_number("1e3") == 1000 and parse_number(".5") == Fraction(1, 2)
    for not_a_number in ("abc", "1,00", "1/0", "", "4 2", "--1"):
        assert parse_number(not_a_number) is None
    assert answers_match("1,000", "1000.0") and answers_match("0.30", ".3")
    assert not answers_match("1000", "1001")
    assert answers_match(" Paris  France", "Paris France") and not answers_match("paris", "Paris")
    assert answers_match("paris", "Paris", ignore_case=True)


# ------------------------------------------------------------------------------------------------
# Built-in rewards


def test_exact_match_last_number():
    reward = exact_match()
    completions = ["17 + 25 = 42", "The answer is 1,000.", "1000.0", "I don't know", "", "41", "42 or 43"]
    answers = ["42", "1000", 1000, "42", "42", "42", "42"]
    assert reward(["q"] * 7, completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert reward.weight == 1.0 and reward.name == "exact_match"


def test_exact_match_boxed_and_tags():
    boxed = exact_match(extract="boxed")
    completions = [r"so \boxed{1,000}", r"\boxed{\frac{1}{2}}", r"\boxed{}", "42 without a box", r"\boxed{42"]
    answers = ["1000", r"\frac{1}{2}", "42", "42", "42"]
    assert boxed([""] * 5, completions, answer=answers) == [1.0, 1.0, 0.0, 0.0, 0.0]
    tagged = exact_match(column="solution", extract="answer_tag", ignore_case=True)
    assert tagged(["", ""], ["<answer> PARIS </answer>", "<answer>Lyon</answer>"],
                  solution=["Paris", "Paris"]) == [1.0, 0.0]


def test_exact_match_reference_extraction_and_missing_references():
    gsm8k = exact_match(reference_extract="last_number")
    scores = gsm8k(["", "", "", ""], ["so 72", "so 71", "72", "72"],
                   answer=["48 + 24 = 72\n#### 72", "#### 72", None, math.nan])
    assert scores[:2] == [1.0, 0.0]
    assert math.isnan(scores[2]) and math.isnan(scores[3])  # no reference: unscored, not 0


def test_exact_match_names_a_missing_column():
    with pytest.raises(RewardError, match=r"reward 'exact_match': exact_match needs the column 'answer'; "
                                          r"the rows have: label, split\.") as err:
        exact_match()(["q"], ["1"], label=["1"], split=["train"])
    one_line(err)
    with pytest.raises(ConfigError, match=r"'extract=box'.*Did you mean 'boxed'\?"):
        exact_match(extract="box")


def test_format_match():
    think = format_match(r"<think>.*</think>\s*<answer>.*</answer>", fullmatch=True)
    completions = ["<think>a\nb</think>\n<answer>42</answer>", "<think>x</think><answer>1</answer> extra",
                   "<answer>42</answer>", ""]
    assert think([""] * 4, completions) == [1.0, 0.0, 0.0, 0.0]
    anywhere = format_match(r"<answer>\d+</answer>")
    assert anywhere([""] * 4, completions) == [1.0, 1.0, 1.0, 0.0]
    no_dotall = format_match(r"<think>.*</think>", dotall=False)
    assert no_dotall(["", ""], ["<think>a\nb</think>", "<think>ab</think>"]) == [0.0, 1.0]
    number_only = format_match(r"\d+", fullmatch=True)
    assert number_only(["", "", ""], ["42", "42.", " 42"]) == [1.0, 0.0, 0.0]
    assert format_match("answer", ignore_case=True)([""], ["ANSWER"]) == [1.0]
    with pytest.raises(ConfigError, match=r"'pattern=\(' is not a valid regular expression") as err:
        format_match("(")
    one_line(err)


def test_length_penalty():
    penalty = length_penalty(max_chars=5, per_char=0.1)
    scores = penalty(["", "", "", ""], ["", "12345", "123456", "x" * 15])
    assert scores == pytest.approx([0.0, 0.0, -0.1, -1.0])
    floored = length_penalty(max_chars=0, per_char=1.0, floor=-3.0)
    assert floored(["", ""], ["ab", "abcdef"]) == [-2.0, -3.0]
    for kwargs, pattern in [(dict(max_chars=-1), "max_chars"), (dict(max_chars=2.5), "max_chars"),
                            (dict(max_chars=5, per_char=-1), "per_char"),
                            (dict(max_chars=5, floor=1.0), "floor")]:
        with pytest.raises(ConfigError, match=pattern):
            length_penalty(**kwargs)


def test_token_share_counts_words_or_characters():
    words = token_share(token="7")
    completions = ["7 7 cats", "7", "77 7x x7", "", "   ", " 7\n7\t7 "]
    assert words([""] * 6, completions) == pytest.approx([2 / 3, 1.0, 0.0, 0.0, 0.0, 1.0])
    numbers = token_share(pattern="[0-9]+")  # the whole word must match: "7x" and "1.5" do not
    assert numbers([""] * 5, ["12 7 cats", "1.5 x7 7x", "3 4 5", "", "one 2"]) == \
        pytest.approx([2 / 3, 0.0, 1.0, 0.0, 0.5])
    chars = token_share(token="a", unit="char")  # whitespace is not a piece
    assert chars([""] * 4, ["a a", "ab", "bcd", "aaa b"]) == pytest.approx([1.0, 0.5, 0.0, 0.75])
    digits = token_share(pattern="[0-9]", unit="char")
    assert digits([""] * 2, ["a1 b2", "12.5"]) == pytest.approx([0.5, 0.75])
    built = build_reward("ftexp.tasks.rewards.token_share", name="numbers", weight=0.5, pattern="[0-9]+")
    assert (built.name, built.weight, built([""], ["1 2 x"])) == ("numbers", 0.5, [pytest.approx(2 / 3)])
    for kwargs, pattern in [({}, "exactly one of"), (dict(token="a", pattern="a"), "exactly one of"),
                            (dict(token=""), "token"), (dict(token="a b"), "token"),
                            (dict(token="ab", unit="char"), "one character"),
                            (dict(pattern="("), "regular expression"),
                            (dict(token="a", unit="words"), "Did you mean 'word'")]:
        with pytest.raises(ConfigError, match=pattern) as err:
            token_share(**kwargs)
        one_line(err)


# ------------------------------------------------------------------------------------------------
# The Reward wrapper: what a user's function may return, and how its failures read.


def test_reward_checks_what_the_function_returns():
    def broken(prompts, completions, **columns):
        raise KeyError("answer")

    with pytest.raises(RewardError, match=r"^reward 'mine' raised KeyError: 'answer'$") as err:
        Reward(broken, "mine")(["q"], ["c"])
    one_line(err)
    cases = [(lambda prompts, completions: [1.0], r"returned 1 scores for 2 completions"),
             (lambda prompts, completions: 3.0, r"returned float; expected a list"),
             (lambda prompts, completions: ["x", 1], r"returned 'x' for completion 0"),
             (lambda prompts, completions: [1.0, math.inf], r"returned inf for completion 1.*finite")]
    for fn, pattern in cases:
        with pytest.raises(RewardError, match=pattern) as err:
            Reward(fn, "mine")(["q", "q"], ["a", "b"])
        one_line(err)
    scores = Reward(lambda prompts, completions: [None, math.nan, 1, True], "mine")([""] * 4, ["a"] * 4)
    assert math.isnan(scores[0]) and math.isnan(scores[1]) and scores[2:] == [1.0, 1.0]
    with pytest.raises(ConfigError, match="weight"):
        Reward(lambda prompts, completions: [], "mine", weight=math.nan)


def test_reward_passes_keywords_and_only_the_columns_a_function_names():
    seen = {}

    def trl_style(completions, answer, **kwargs):  # TRL's reward-function shape
        seen["kwargs"] = sorted(kwargs)
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    def strict(completions, answer):  # no **kwargs: `prompts` and `split` are left out
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    for fn in (trl_style, strict):
        assert Reward(fn, "r")(["q", "q"], ["1", "2"], answer=["1", "1"], split=["train"] * 2) == [1.0, 0.0]
    assert seen["kwargs"] == ["prompts", "split"]


# ------------------------------------------------------------------------------------------------
# build_reward: config nodes (dotted paths), factories and plain functions.


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        def ends_with(prompts, completions, suffix="!", **columns):
            return [float(c.endswith(suffix)) for c in completions]

        def make_contains(word):
            return lambda prompts, completions, **columns: [float(word in c) for c in completions]

        def not_a_scorer(level):
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_build_reward_from_a_builtin_node():
    reward = build_reward("ftexp.tasks.rewards.exact_match", name="correct", weight=2.0, extract="boxed")
    assert (reward.name, reward.weight) == ("correct", 2.0)
    assert reward([""], [r"\boxed{7}"], answer=["7"]) == [1.0]
    with pytest.raises(ConfigError, match=r"unknown key 'rewards\.correct\.colum'.*Did you mean "
                                          r"'rewards\.correct\.column'\?") as err:
        build_reward("ftexp.tasks.rewards.exact_match", name="correct", colum="answer")
    one_line(err)
    with pytest.raises(ConfigError, match=r"'rewards\.correct\.extract=box' is not a valid choice") as err:
        build_reward("ftexp.tasks.rewards.exact_match", name="correct", extract="box")
    one_line(err)
    with pytest.raises(ConfigError, match=r"rewards\.fmt needs 'pattern'"):
        build_reward("ftexp.tasks.rewards.format_match", name="fmt")
    with pytest.raises(ConfigError, match=r"rewards\.fmt: 'pattern=\[' is not a valid regular expression"):
        build_reward("ftexp.tasks.rewards.format_match", name="fmt", pattern="[")


def test_build_reward_from_a_user_function_and_factory(user_module):
    plain = build_reward(f"{user_module}.ends_with", name="bang", weight=0.5)
    assert plain(["", ""], ["yes!", "no"]) == [1.0, 0.0] and plain.weight == 0.5
    bound = build_reward(f"{user_module}.ends_with", name="q", suffix="?")
    assert bound(["", ""], ["why?", "no"]) == [1.0, 0.0]
    factory = build_reward(f"{user_module}.make_contains", name="has_cat", word="cat")
    assert factory(["", ""], ["a cat", "a dog"]) == [1.0, 0.0]
    with pytest.raises(ConfigError, match=r"rewards\.q\.completions is filled in by ftexp"):
        build_reward(f"{user_module}.ends_with", name="q", completions=["x"])
    with pytest.raises(ConfigError, match=r"rewards\.x: my_rewards\.not_a_scorer returned int, not a reward"):
        build_reward(f"{user_module}.not_a_scorer", name="x", level=1)
    with pytest.raises(ConfigError, match=r"rewards\.x\._target_=my_rewards\.nope cannot be imported") as err:
        build_reward(f"{user_module}.nope", name="x")
    one_line(err)


def test_build_reward_from_callables():
    def shout(completions, **kwargs):
        return [float(c.isupper()) for c in completions]

    reward = build_reward(shout)
    assert reward.name == "shout" and reward(["", ""], ["HI", "hi"]) == [1.0, 0.0]
    rebuilt = build_reward(length_penalty, name="short", weight=0.1, max_chars=2)
    assert (rebuilt.name, rebuilt.weight) == ("short", 0.1) and rebuilt([""], ["abcd"]) == [-0.02]


def test_the_paths_rewards_had_before_they_moved_still_work(tmp_path):
    """`ftexp.rewards.<function>` (their home before ftexp.tasks.rewards) in a user's YAML or
    override: validated to today's path, which the run saves, and built from either."""
    from conftest import compose_config

    cfg = compose_config(["task=grpo", "model=tiny_llama", "data=arithmetic",
                          "task.rewards.correct._target_=ftexp.rewards.exact_match"], tmp_path)
    assert cfg.task.rewards.correct._target_ == "ftexp.tasks.rewards.exact_match"
    reward = build_reward("ftexp.rewards.exact_match", name="correct")
    assert reward([""], ["so 7"], answer=["7"]) == [1.0]


def test_module_stays_light():
    # Rewards run next to the sampler and in user code: the standard library and ftexp only.
    imported = top_level_imports(rewards.__file__)
    assert imported <= {"__future__", "collections", "fractions", "functools", "inspect", "math", "re",
                        "typing", "ftexp", "pathlib"}


# ------------------------------------------------------------------------------------------------
# The shipped prompt set


def load_script():
    spec = importlib.util.spec_from_file_location("make_arithmetic_prompts",
                                                  ROOT / "scripts" / "make_arithmetic_prompts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_prompts_are_what_the_script_makes(tmp_path):
    shipped = ROOT / "data" / "grpo" / "arithmetic_prompts.jsonl"
    script = load_script()
    script.main(tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == shipped.read_bytes()  # deterministic
    assert shipped.stat().st_size < 30_000
    rows = [json.loads(line) for line in shipped.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 200
    assert {r["split"]: sum(x["split"] == r["split"] for x in rows) for r in rows} == \
        {"train": 160, "validation": 20, "test": 20}
    assert len({r["prompt"] for r in rows}) == 200  # no validation / test prompt is a training one
    reward = exact_match()
    for row in rows:
        expression = row["prompt"].removeprefix("What is ").split("?")[0]
        a, op, b = expression.split()
        value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert row["answer"] == str(value) and value >= 0
        assert row["prompt"].endswith("Answer with the number only.")
        scores = reward([row["prompt"]] * 2, [f"{value}", f"{value + 1}"], answer=[row["answer"]] * 2)
        assert scores == [1.0, 0.0]
