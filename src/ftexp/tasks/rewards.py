"""Reward functions for online RL (task=grpo): the built-ins, and `build_reward`, which turns a
config node into a named, weighted, checked `Reward`.

A reward function is any callable

    fn(prompts: list[str], completions: list[str], **columns) -> list[float | None]

returning one number per completion. `columns` are the row's other columns (a reference answer,
say), each a list aligned with `completions` (a prompt's columns repeated for each of its
completions). It is called with keywords, as TRL calls its reward functions, so TRL's
`fn(completions, answer, **kwargs)` works as is; a function without **kwargs gets only the
columns it names. None (or NaN) means "cannot score this one": it is left out of the group's
baseline rather than counted as 0.

In a config each function is a `_target_` node with an optional `weight` (default 1.0):

    rewards:
      correct: {_target_: ftexp.tasks.rewards.exact_match, column: answer, extract: last_number}
      format:  {_target_: ftexp.tasks.rewards.format_match, pattern: '[0-9]+', fullmatch: true, weight: 0.2}
      mine:    {_target_: my_module.my_reward, weight: 0.5}

A target with a `completions` parameter is the reward function itself (the node's other keys are
bound as keyword arguments); any other target is a factory, called with the node's keys, that
returns one (the built-ins here are factories, so their settings are checked when the run starts).
`weight` belongs to the node, never passed to the target.
Scores are returned unweighted: the task multiplies by `Reward.weight` when it sums them, so each
function's own mean can be logged.

No torch here, nothing heavy: rewards run on CPU next to the sampler.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any, Literal

from ftexp.runs.errors import ConfigError, FtexpError

EXTRACTIONS = ("last_number", "boxed", "answer_tag", "none")
ExtractKind = Literal["last_number", "boxed", "answer_tag", "none"]

# A decimal number as people write it: optional minus, digits with or without thousands commas
# ("1,000" — exactly three digits after each comma), an optional fraction. The look-behind keeps
# "5-3" from reading as -3 and "1.2.3" from ending in a stray "3"; the look-ahead keeps "1,0000" from
# reading as "1,000" (it reads as "1" and "0000"), while "3,4" reads as 3 and 4.
_NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{")


class RewardError(FtexpError):
    """A reward function failed or returned something that is not one number per completion."""


class Reward:
    """A reward function with its config name and weight. Calling it runs the function and checks
    the result: one finite number (or None / NaN: unscored → NaN) per completion, else a one-line
    RewardError naming the function — also when the function itself raises.

    The function is called with keywords (`prompts=`, `completions=`, then the columns), as TRL
    calls its reward functions, so `fn(completions, **kwargs)` works too; a function without
    **kwargs gets only the columns it names."""

    def __init__(self, fn: Callable[..., Sequence[Any]], name: str, weight: float = 1.0) -> None:
        if not callable(fn):
            raise ConfigError(f"reward '{name}' is not callable: {fn!r}.")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise ConfigError(f"reward '{name}': 'weight={weight}' must be a finite number.")
        self.fn, self.name, self.weight = fn, name, float(weight)
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):  # no signature to read: pass everything
            params = {}
        takes_any = not params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._accepts: set[str] | None = None if takes_any else set(params)

    def __repr__(self) -> str:
        return f"Reward({self.name!r}, weight={self.weight})"

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        arguments = {"prompts": prompts, "completions": completions, **columns}
        if self._accepts is not None:
            arguments = {k: v for k, v in arguments.items() if k in self._accepts}
        try:
            scores = self.fn(**arguments)
        except FtexpError as err:  # already one line, and may name the column that is missing
            raise RewardError(f"reward '{self.name}': {err}") from err
        except Exception as err:
            reason = (str(err).strip().splitlines() or [""])[0]
            raise RewardError(f"reward '{self.name}' raised {type(err).__name__}: {reason}") from err
        try:
            scores = list(scores)
        except TypeError:
            raise RewardError(f"reward '{self.name}' returned {type(scores).__name__}; expected a list "
                              "with one number per completion.") from None
        if len(scores) != len(completions):
            raise RewardError(f"reward '{self.name}' returned {len(scores)} scores for "
                              f"{len(completions)} completions.")
        out = []
        for i, score in enumerate(scores):
            if score is None:
                out.append(math.nan)
                continue
            try:
                value = float(score)
            except (TypeError, ValueError):
                raise RewardError(f"reward '{self.name}' returned {score!r} for completion {i}; "
                                  "expected a number or None.") from None
            if math.isinf(value):
                raise RewardError(f"reward '{self.name}' returned {value} for completion {i}; "
                                  "rewards must be finite (None or NaN: unscored).")
            out.append(value)
        return out


def _is_reward_function(target: Callable[..., Any]) -> bool:
    """Whether the target scores completions itself (it has a `completions` parameter) rather
    than building a scorer. A class is always a factory: calling it builds the instance."""
    if inspect.isclass(target):
        return False
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return "completions" in params


def _check_bound_keys(target: Callable[..., Any], kwargs: dict[str, Any], where: str, path: str) -> None:
    """Keys bound to a reward function: parameters of it (or anything, with **kwargs), never the
    arguments each call fills in."""
    from ftexp.runs.errors import did_you_mean

    params = inspect.signature(target).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in kwargs:
        if key in ("prompts", "completions"):
            raise ConfigError(f"{where}.{key} is filled in by ftexp at each step; remove it from the config.")
        if key not in params and not takes_any:
            settable = [n for n in params if n not in ("prompts", "completions")]
            hint = did_you_mean(key, settable, f"{where}.")
            raise ConfigError(f"unknown key '{where}.{key}' for {path}.{hint} "
                              f"Valid keys: {', '.join(settable) or 'none'}.")


def build_reward(target: str | Callable[..., Any], *, name: str | None = None, weight: float = 1.0,
                 **kwargs: Any) -> Reward:
    """The Reward a config node describes: `target` is a dotted path or a callable, `kwargs` the
    node's other keys, `name` its key under the task's rewards. A reward function (it has a
    `completions` parameter) gets `kwargs` bound with functools.partial; any other target is a
    factory, called with them, that must return a reward function (or a Reward, whose own name
    and weight are then replaced by these). Bad keys fail here, in one line, before any sampling."""
    from ftexp.builders.targets import check_node, import_target

    where = f"rewards.{name}" if name else "reward"
    given_as_path = isinstance(target, str)
    if given_as_path:
        path, target = target, import_target(target, where)
    else:
        path = getattr(target, "__qualname__", repr(target))
    name = name or getattr(target, "__name__", "reward")
    if _is_reward_function(target):
        _check_bound_keys(target, kwargs, where, path)
        return Reward(functools.partial(target, **kwargs) if kwargs else target, name=name, weight=weight)
    if given_as_path:  # the factory's keys against its signature, with a did-you-mean
        check_node({"_target_": path, **kwargs}, where)
    try:
        fn = target(**kwargs)
    except FtexpError as err:
        raise ConfigError(f"{where}: {err}") from err
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ConfigError(f"{where}: {path}(…) failed: {type(err).__name__}: {reason}") from err
    if isinstance(fn, Reward):
        fn = fn.fn
    if not callable(fn):
        raise ConfigError(f"{where}: {path} returned {type(fn).__name__}, not a reward function "
                          "(a callable taking prompts and completions).")
    return Reward(fn, name=name, weight=weight)


# ---------------------------------------------------------------------------------------------
# Answer extraction and comparison


def _last_boxed(text: str) -> str | None:
    """The content of the last complete \\boxed{...}, braces balanced (\\boxed{\\frac{1}{2}} →
    \\frac{1}{2}); a \\boxed{ never closed (a completion cut at max length) is passed over.
    None when there is no complete one."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i]
    return None


def extract_answer(text: str, how: str) -> str | None:
    """The answer span of `text`: the last number ("last_number"), the content of the last
    \\boxed{} ("boxed"), of the last <answer>…</answer> ("answer_tag"), or the whole text ("none").
    None when there is nothing to extract."""
    if how == "last_number":
        numbers = _NUMBER.findall(text)
        return numbers[-1] if numbers else None
    if how == "boxed":
        return _last_boxed(text)
    if how == "answer_tag":
        tags = _ANSWER_TAG.findall(text)
        return tags[-1] if tags else None
    if how == "none":
        return text
    raise ConfigError(f"'extract={how}' is not a valid choice. Choices: {', '.join(EXTRACTIONS)}.")


def parse_number(text: str) -> Fraction | None:
    """`text` as an exact number when it is one — "1,000", "1000" and "1000.0" are all 1000;
    "-2.5", "3/4" and "1e3" parse too; a trailing period, surrounding spaces, a leading "$" or a
    trailing "%" are ignored — else None. Exact (Fraction), so 0.1 + 0.2 compares equal to 0.3."""
    s = text.strip().rstrip(".").strip()
    s = s.removeprefix("$").removesuffix("%").strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if not re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:/\d+)?", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(answer: str, reference: str, ignore_case: bool = False) -> bool:
    """Numbers compare by value (parse_number), anything else as text with whitespace collapsed
    (and case ignored if asked)."""
    a, r = parse_number(answer), parse_number(reference)
    if a is not None and r is not None:
        return a == r
    a_text, r_text = " ".join(answer.split()), " ".join(reference.split())
    if ignore_case:
        return a_text.casefold() == r_text.casefold()
    return a_text == r_text


def _column(columns: dict[str, Any], column: str, n: int, what: str) -> list[Any]:
    if column not in columns:
        have = ", ".join(sorted(columns)) or "none"
        raise RewardError(f"{what} needs the column '{column}'; the rows have: {have}.")
    values = list(columns[column])
    if len(values) != n:
        raise RewardError(f"column '{column}' has {len(values)} values for {n} completions.")
    return values


def _check_extract(key: str, value: str) -> None:
    if value not in EXTRACTIONS:
        from ftexp.runs.errors import did_you_mean

        raise ConfigError(f"'{key}={value}' is not a valid choice.{did_you_mean(str(value), EXTRACTIONS)} "
                          f"Choices: {', '.join(EXTRACTIONS)}.")


# ---------------------------------------------------------------------------------------------
# Built-in reward factories: each returns a Reward (a plain callable with a name and a weight).


def exact_match(column: str = "answer", extract: ExtractKind = "last_number",
                reference_extract: ExtractKind = "none", ignore_case: bool = False,
                weight: float = 1.0) -> Reward:
    """1.0 where the completion's answer equals the reference in `column`, else 0.0.

    The answer is taken from the completion by `extract` (see extract_answer); a completion with
    nothing to extract (no number, no \\boxed{}) scores 0. The reference is used whole, or
    extracted the same way with `reference_extract` (e.g. "last_number" for GSM8K's
    "… #### 72"). Numbers compare by value ("1,000" == "1000" == "1000.0"), other answers as text
    with whitespace collapsed. A missing reference (None / NaN) leaves the completion unscored.
    No LaTeX normalisation: \\boxed{\\frac{1}{2}} matches "\\frac{1}{2}", not "1/2".
    """
    _check_extract("extract", extract)
    _check_extract("reference_extract", reference_extract)

    def exact_match_reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
        references = _column(columns, column, len(completions), "exact_match")
        scores: list[float | None] = []
        for completion, reference in zip(completions, references, strict=True):
            if reference is None or (isinstance(reference, float) and math.isnan(reference)):
                scores.append(None)
                continue
            wanted = extract_answer(str(reference), reference_extract)
            if wanted is None:
                scores.append(None)
                continue
            got = extract_answer(completion, extract)
            scores.append(float(got is not None and answers_match(got, wanted, ignore_case)))
        return scores

    return Reward(exact_match_reward, name="exact_match", weight=weight)


def format_match(pattern: str, fullmatch: bool = False, dotall: bool = True, ignore_case: bool = False,
                 weight: float = 1.0) -> Reward:
    """1.0 where the completion matches the regular expression `pattern`, else 0.0: the whole
    completion with `fullmatch=True`, anywhere in it otherwise (re.search). `dotall` (default on)
    lets "." match newlines, which a pattern like "<think>.*</think>\\s*<answer>.*</answer>" over
    a multi-line completion needs."""
    flags = (re.DOTALL if dotall else 0) | (re.IGNORECASE if ignore_case else 0)
    try:
        compiled = re.compile(pattern, flags)
    except (re.error, TypeError) as err:
        raise ConfigError(f"'pattern={pattern}' is not a valid regular expression: {err}.") from err
    match = compiled.fullmatch if fullmatch else compiled.search

    def format_match_reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return [float(match(completion) is not None) for completion in completions]

    return Reward(format_match_reward, name="format_match", weight=weight)


def length_penalty(max_chars: int, per_char: float = 0.01, floor: float | None = None,
                   weight: float = 1.0) -> Reward:
    """0 for a completion of up to `max_chars` characters, then -per_char for each character
    beyond: -per_char * max(0, len - max_chars), no lower than `floor` if given. Lengths are in
    characters of the decoded completion as it is (not tokens: tokenizer-free, and the same for
    every model)."""
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 0:
        raise ConfigError(f"'max_chars={max_chars}' must be an integer >= 0.")
    if isinstance(per_char, bool) or not isinstance(per_char, int | float) or not per_char >= 0:
        raise ConfigError(f"'per_char={per_char}' must be a number >= 0 (the penalty per extra character).")
    if floor is not None and not (isinstance(floor, int | float) and floor <= 0):
        raise ConfigError(f"'floor={floor}' must be a number <= 0 (the lowest penalty), or null.")

    def length_penalty_reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        scores = []
        for completion in completions:
            score = -per_char * max(0, len(completion) - max_chars)
            scores.append(score if floor is None else max(score, float(floor)))
        return scores

    return Reward(length_penalty_reward, name="length_penalty", weight=weight)


TOKEN_SHARE_UNITS = ("word", "char")


def token_share(token: str | None = None, pattern: str | None = None, unit: Literal["word", "char"] = "word",
                weight: float = 1.0) -> Reward:
    """The share of the completion's pieces that are `token` (equal to it) or match `pattern` (a
    regular expression the whole piece must match), in [0, 1]; an empty completion scores 0. Give
    exactly one of the two. Pieces are the decoded completion's whitespace-separated words
    (unit="word": "7 7 cats" has 3, two of them "7") or its characters other than whitespace
    (unit="char"). Text, not model tokens: tokenizer-free, the same for every model.

    A learnable toy reward: `pattern='[0-9]+'` rewards completions made of numbers only (1.0), which
    a random-init model samples now and then (a digit token is one of ~3% of a BERT vocabulary),
    so each group's rewards differ and GRPO has something to push on (+experiment=tiny_grpo_toy)."""
    if (token is None) == (pattern is None):
        raise ConfigError("token_share needs exactly one of 'token' (a piece to count) and 'pattern' "
                          "(a regular expression a piece must match); "
                          f"got token={token!r}, pattern={pattern!r}.")
    if unit not in TOKEN_SHARE_UNITS:
        from ftexp.runs.errors import did_you_mean

        raise ConfigError(f"'unit={unit}' is not a valid choice.{did_you_mean(str(unit), TOKEN_SHARE_UNITS)} "
                          f"Choices: {', '.join(TOKEN_SHARE_UNITS)}.")
    if token is not None:
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise ConfigError(f"'token={token!r}' must be a non-empty string without whitespace.")
        if unit == "char" and len(token) != 1:
            raise ConfigError(f"'token={token}' must be one character with unit=char.")

        def is_target(piece: str) -> bool:
            return piece == token
    else:
        try:
            compiled = re.compile(pattern)
        except (re.error, TypeError) as err:
            raise ConfigError(f"'pattern={pattern}' is not a valid regular expression: {err}.") from err

        def is_target(piece: str) -> bool:
            return compiled.fullmatch(piece) is not None

    def token_share_reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        scores = []
        for completion in completions:
            pieces = completion.split() if unit == "word" else [c for c in completion if not c.isspace()]
            scores.append(sum(map(is_target, pieces)) / len(pieces) if pieces else 0.0)
        return scores

    return Reward(token_share_reward, name="token_share", weight=weight)


def reward_model(run: str, batch_size: int = 16, weight: float = 1.0) -> Reward:
    """A `task=reward` run's scores as a reward: its trained model, loaded once when the reward is
    built, scores each (prompt, completion) as `ftexp.predict` scores (prompt, response) rows —
    the same template or chat rendering, the same truncation."""
    from pathlib import Path

    from ftexp.predict import load_trained
    from ftexp.tasks.reward import RewardTask

    task, tokenizer, cfg = load_trained(Path(run).expanduser())
    if not isinstance(task, RewardTask):
        raise ConfigError(f"reward_model(run={run}): that is a task={cfg.task.name} run; a reward model "
                          "comes from a task=reward run.")

    def reward_model_score(prompts: Sequence[Any], completions: Sequence[str], **columns: Any) -> list[float]:
        return task.score_texts(list(prompts), list(completions), tokenizer, cfg, batch_size)

    return Reward(reward_model_score, name="reward_model", weight=weight)
