"""The served model: a finished run (rebuilt as `ftexp.generate` rebuilds it) or an exported model
directory, its prompts built as training built them, and generation — batched for requests that
arrive together, streamed token by token for one that asks."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ftexp.runs.errors import FtexpError
from ftexp.serving.schemas import RequestError


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # stop (EOS or a stop string) | length (max_tokens reached)
    prompt_tokens: int
    completion_tokens: int


def not_a_source(path: Path) -> FtexpError:
    return FtexpError(f"'{path}' is neither an ftexp run directory (config.yaml) nor a model directory "
                      "(config.json); pass a finished run or the output of ftexp.export.")


def _truncate(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` cut before the first stop string, and whether one was found."""
    cuts = [text.index(s) for s in stops if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


class Engine:
    """A causal LM with its tokenizer, default generation settings and prompt building."""

    def __init__(self, model: Any, tokenizer: Any, defaults: dict[str, Any], name: str,
                 chat_ids: Any, completion_ids: Any, single_turn: bool = False):
        self.model, self.tokenizer, self.defaults, self.name = model.eval(), tokenizer, defaults, name
        # Trained on single instructions (a prompt template, no chat): one user message per request.
        self.single_turn = single_turn
        self._chat_ids, self._completion_ids = chat_ids, completion_ids
        config = model.config
        self.context_length = int(getattr(config, "max_position_embeddings", None)
                                  or getattr(config, "n_positions", None) or tokenizer.model_max_length)
        self.lock = threading.Lock()  # one generation at a time on the model

    @classmethod
    def from_path(cls, path: Path, name: str | None = None) -> Any:
        """A run directory (config.yaml + checkpoints/best.ckpt) or an exported model directory:
        an Engine for language models, a Predictor for classifier, regressor and reward runs."""
        from omegaconf import OmegaConf

        from ftexp.runs import run_dir
        from ftexp.tasks.registry import get_task

        name = name or path.resolve().name
        if (path / run_dir.CONFIG_FILE).is_file():
            task = (OmegaConf.load(path / run_dir.CONFIG_FILE).get("task") or {}).get("name")
            if task is not None and get_task(task).predicts:
                from ftexp.serving.predictor import Predictor

                return Predictor(path, name)
            return cls._from_run(path, name)
        if (path / "config.json").is_file():
            return cls._from_export(path, name)
        raise not_a_source(path)

    @classmethod
    def _from_run(cls, path: Path, name: str) -> Engine:
        from ftexp.generate import RunGenerator

        generator = RunGenerator(path)

        def chat_ids(messages: list[dict[str, str]]) -> list[int]:
            if generator.trained_on_chat or not generator.uses_template:
                return _chat_template_ids(generator.tokenizer, messages)
            users = [m for m in messages if m["role"] == "user"]
            if len(messages) != 1 or not users:
                raise RequestError("this run was trained on single instructions through its prompt template "
                                   "(data.prompt_template): send one user message", "messages")
            return generator.prompt_ids({generator.main_column: users[0]["content"]})

        return cls(generator.model, generator.tokenizer, dict(generator.settings), name, chat_ids,
                   lambda text: generator.prompt_ids({generator.main_column: text}, raw=True),
                   single_turn=generator.uses_template and not generator.trained_on_chat)

    @classmethod
    def _from_export(cls, path: Path, name: str) -> Engine:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:  # a model directory written elsewhere; batches need padding
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(path)
        model.to("cuda" if torch.cuda.is_available() else "cpu")
        defaults: dict[str, Any] = {"max_new_tokens": 256}
        if (path / "generation_config.json").is_file():
            saved = GenerationConfig.from_pretrained(path)
            keys = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k")
            defaults.update({k: getattr(saved, k) for k in keys if getattr(saved, k, None) is not None})
        return cls(model, tokenizer, defaults, name, lambda m: _chat_template_ids(tokenizer, m),
                   lambda text: tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- requests -> settings and prompts ------------------------------------------------------

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self._chat_ids(messages)

    def completion_ids(self, prompt: str) -> list[int]:
        return self._completion_ids(prompt)

    def settings(self, max_tokens: int | None, temperature: float | None, top_p: float | None,
                 prompt_tokens: int) -> dict[str, Any]:
        """GenerationConfig keys: the model's defaults, with what the request sets (temperature 0:
        greedy) and its token budget checked against the context length."""
        settings = dict(self.defaults)
        if max_tokens is not None:
            settings["max_new_tokens"] = max_tokens
        if temperature is not None:
            settings["do_sample"] = temperature > 0
            if temperature > 0:
                settings["temperature"] = temperature
        if top_p is not None and settings.get("do_sample"):
            settings["top_p"] = top_p
        budget = int(settings.get("max_new_tokens") or 256)
        if prompt_tokens + budget > self.context_length:
            raise RequestError(f"this model's context length is {self.context_length} tokens; the prompt has "
                               f"{prompt_tokens} and max_tokens asks for {budget} more "
                               f"({prompt_tokens + budget} in all)", "max_tokens")
        return settings

    # -- generation ------------------------------------------------------------------------------

    def _config(self, settings: dict[str, Any], stops: list[str]) -> Any:
        from transformers import GenerationConfig

        config = GenerationConfig(**settings, eos_token_id=self.tokenizer.eos_token_id,
                                  pad_token_id=self.tokenizer.pad_token_id, stop_strings=stops or None)
        if not config.do_sample:  # greedy: no sampling knobs, so transformers does not warn
            config.temperature, config.top_p, config.top_k = None, None, None
        return config

    def generate(self, prompts: list[list[int]], settings: dict[str, Any], stops: list[str],
                 seed: int | None = None) -> list[Completion]:
        """One batch: prompts left-padded so every row ends where generation starts."""
        config = self._config(settings, stops)
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        with self.lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                      tokenizer=self.tokenizer)
        results = []
        for prompt, row in zip(prompts, out[:, width:].tolist(), strict=True):
            eos = row.index(self.tokenizer.eos_token_id) if self.tokenizer.eos_token_id in row else None
            tokens = row if eos is None else row[:eos]
            while eos is None and tokens and tokens[-1] == pad:  # a row ended by a stop string early
                tokens = tokens[:-1]
            text, stopped = _truncate(self.tokenizer.decode(tokens, skip_special_tokens=True), stops)
            finished = eos is not None or stopped or len(tokens) < config.max_new_tokens
            results.append(Completion(text, "stop" if finished else "length", len(prompt),
                                      len(tokens) + (eos is not None)))
        return results

    def stream(self, prompt: list[int], settings: dict[str, Any], stops: list[str],
               seed: int | None = None) -> Stream:
        return Stream(self, prompt, settings, stops, seed)


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string: they wait for
    the next piece, so a stop string is never sent in part."""
    return max((k for stop in stops for k in range(1, min(len(stop), len(text) + 1))
                if text.endswith(stop[:k])), default=0)


class _Progress:
    """A stopping criterion that counts the tokens generated, remembers the last one, and ends
    generation once `cancelled` is set (the reader stopped: a stop string, or the client left)."""

    def __init__(self, prompt_length: int):
        self.prompt_length, self.generated, self.last = prompt_length, 0, None
        self.cancelled = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        self.generated, self.last = input_ids.shape[1] - self.prompt_length, int(input_ids[0, -1])
        return torch.full((input_ids.shape[0],), self.cancelled.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class Stream:
    """One streamed completion: iterate for the new text piece by piece as tokens are decoded
    (transformers' TextIteratorStreamer), cut before the first stop string; `finish_reason` is
    set once the pieces run out. Closing it early stops generation at the next token."""

    def __init__(self, engine: Engine, prompt: list[int], settings: dict[str, Any], stops: list[str],
                 seed: int | None):
        self.engine, self.prompt, self.settings, self.stops, self.seed = engine, prompt, settings, stops, seed
        self.finish_reason: str | None = None
        self.progress = _Progress(len(prompt))

    def __iter__(self) -> Iterator[str]:
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        engine, stops = self.engine, self.stops
        streamer = TextIteratorStreamer(engine.tokenizer, skip_prompt=True, skip_special_tokens=True)
        config = engine._config(self.settings, stops)
        ids = torch.tensor([self.prompt], device=next(engine.model.parameters()).device)
        progress, failure = self.progress, []
        criteria = StoppingCriteriaList([progress])

        def run() -> None:
            try:
                with engine.lock, torch.inference_mode():
                    if self.seed is not None:
                        torch.manual_seed(self.seed)
                    engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                          streamer=streamer, generation_config=config,
                                          tokenizer=engine.tokenizer, stopping_criteria=criteria)
            except BaseException as err:  # surfaced to the reader below, never a dead thread
                failure.append(err)
                streamer.end()

        threading.Thread(target=run, daemon=True).start()
        text, sent, stopped = "", "", False
        try:
            for piece in streamer:
                text += piece
                shown, stopped = _truncate(text, stops)
                if not stopped:
                    shown = shown[:len(shown) - _held_back(shown, stops)]
                if len(shown) > len(sent):
                    yield shown[len(sent):]
                    sent = shown
                if stopped:
                    break
            if not stopped and len(text) > len(sent):  # the end held back no stop string after all
                yield text[len(sent):]
        finally:  # a stop string, the end, or a reader that left: the model stops writing
            progress.cancelled.set()
        if stopped:  # what it wrote before noticing is not sent (the streamer ends when generate does)
            for _ in streamer:
                pass
        if failure:
            raise failure[0]
        eos = engine.tokenizer.eos_token_id
        ran_out = progress.generated >= config.max_new_tokens and progress.last != eos
        self.finish_reason = "length" if ran_out and not stopped else "stop"


@dataclass
class _Job:
    prompt: list[int]
    settings: dict[str, Any]
    stops: list[str]
    seed: int | None
    future: Future = field(default_factory=Future)

    def key(self) -> tuple:
        return (tuple(sorted((k, str(v)) for k, v in self.settings.items())), tuple(self.stops), self.seed)


class Batcher:
    """Requests that arrive together (within `window_s` of the first) with the same settings go
    through the model as one batch, up to `max_batch` rows: one worker thread owns generation."""

    def __init__(self, engine: Engine, max_batch: int = 8, window_s: float = 0.01):
        self.engine, self.max_batch, self.window_s = engine, max_batch, window_s
        self.jobs: queue.Queue[_Job] = queue.Queue()
        threading.Thread(target=self._work, daemon=True, name="ftexp-batcher").start()

    def submit(self, prompt: list[int], settings: dict[str, Any], stops: list[str],
               seed: int | None) -> Future:
        job = _Job(prompt, settings, stops, seed)
        self.jobs.put(job)
        return job.future

    def _work(self) -> None:
        while True:
            waiting = [self.jobs.get()]
            deadline = time.monotonic() + self.window_s
            while len(waiting) < 4 * self.max_batch:
                try:
                    waiting.append(self.jobs.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict[tuple, list[_Job]] = {}
            # A request whose client left (its future cancelled) is not generated.
            for job in (j for j in waiting if j.future.set_running_or_notify_cancel()):
                groups.setdefault(job.key(), []).append(job)
            for jobs in groups.values():
                for start in range(0, len(jobs), self.max_batch):
                    batch = jobs[start:start + self.max_batch]
                    try:
                        results = self.engine.generate([j.prompt for j in batch], batch[0].settings,
                                                       batch[0].stops, batch[0].seed)
                    except BaseException as err:  # the requests fail, the worker lives on
                        for job in batch:
                            job.future.set_exception(err)
                        continue
                    for job, result in zip(batch, results, strict=True):
                        job.future.set_result(result)


def _chat_template_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError("this model's tokenizer has no chat template; use /v1/completions with a prompt, "
                           "or train with model.chat_template set", "messages")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
