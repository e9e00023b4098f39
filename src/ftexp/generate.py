"""Generate text with a trained causal-LM run:

    python -m ftexp.generate <run dir> --prompt "Write a function that reverses a string."
    python -m ftexp.generate <run dir> --file prompts.jsonl [-o generations.jsonl]
    python -m ftexp.generate <run dir>                # interactive: one prompt per line

A prompt goes through the run's prompt template the way training data did: `--prompt` fills
the template's main column (data.text_columns[0]; other placeholders stay empty), a file's rows
fill every column they have. `--raw` sends the text as is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ftexp.runs import atomic
from ftexp.runs.console import quiet_third_party
from ftexp.runs.errors import FtexpError, reported_as_one_line


class RunGenerator:
    """A finished run's model, tokenizer and prompt formatting, ready to generate."""

    def __init__(self, run: Path, overrides: dict[str, Any] | None = None):
        import torch
        from omegaconf import OmegaConf

        from ftexp.data.causal_lm import LanguageModelingEncoder, PromptFormatter
        from ftexp.predict import load_trained
        from ftexp.tasks.registry import TASKS, get_task

        task, self.tokenizer, cfg = load_trained(run)
        spec = get_task(cfg.task.name)
        if not spec.generates:
            generating = " or ".join(name for name, s in TASKS.items() if s.generates)
            raise FtexpError(f"'{run}' is a task={cfg.task.name} run; generate needs a {generating} "
                             "run (use `python -m ftexp.predict` for labels).")
        self.model = task.network.to("cuda" if torch.cuda.is_available() else "cpu")
        from ftexp.config.data import DataConfig

        data = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), cfg.data))
        self.formatter = PromptFormatter(data, raw_text=not spec.needs_prompts)
        self.encoder = LanguageModelingEncoder(self.tokenizer, self.formatter, train_on_prompt=False)
        self.main_column = data.text_columns[0]
        self.uses_template = spec.needs_prompts and data.prompt_template is not None
        # Conversations in training (data.messages_column, or chat-form preference prompts): a
        # served chat goes through the tokenizer's chat template as they did.
        self.trained_on_chat = spec.needs_prompts and data.messages_column is not None
        self.settings = {**task.hparams.generation, **(overrides or {})}
        # Runs that read a prompt column (preference tasks, GRPO; their checkpoint says how prompts
        # were given): a prompt is rendered as in training — as a user message through the chat
        # template when the training prompts were conversations, else as text through
        # data.prompt_template's {prompt}.
        self.preference = None
        prompts = (task.hparams.target or {}).get("prompts")
        if prompts is not None:
            from ftexp.data.preference_batches import PreferenceEncoder

            self.preference = PreferenceEncoder(self.tokenizer, data.prompt_template)
            self.chat = prompts == "chat"
            self.trained_on_chat = self.chat
            self.main_column = data.preference.prompt_column

    def prompt_text(self, row: dict[str, Any], raw: bool = False) -> str:
        return self.formatter.prompt(row) if self.uses_template and not raw else str(row[self.main_column])

    def prompt_ids(self, row: dict[str, Any], raw: bool = False) -> list[int]:
        if self.preference is None or raw:
            return self.encoder.prompt_ids(self.prompt_text(row, raw))
        text = str(row[self.main_column])
        prompt = [{"role": "user", "content": text}] if self.chat else text
        return self.preference.prompt_ids(prompt, row)

    def generate(self, rows: list[dict[str, Any]], raw: bool = False) -> list[str]:
        from ftexp.tasks.generation import generate_texts

        prompts = [self.prompt_ids(row, raw) for row in rows]
        return generate_texts(self.model, self.tokenizer, prompts, self.settings)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    given = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
             "top_p": args.top_p, "top_k": args.top_k}
    settings = {k: v for k, v in given.items() if v is not None}
    if args.sample:
        settings["do_sample"] = True
    return settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ftexp-generate", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a causal_lm / pretrain run directory")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="one prompt (fills the template's main column)")
    source.add_argument("--file", type=Path, help="CSV / JSONL / … whose rows fill the template")
    parser.add_argument("-o", "--output", type=Path, help="with --file: where to write JSONL "
                        "(default: <run dir>/generations_<file name>.jsonl)")
    parser.add_argument("--raw", action="store_true", help="send prompts as is, without the template")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)

    with reported_as_one_line(args.debug):
        quiet_third_party()
        generator = RunGenerator(args.run_dir, _settings(args))
        column = generator.main_column
        if args.prompt is not None:
            print(generator.generate([{column: args.prompt}], args.raw)[0])
        elif args.file is not None:
            from ftexp.data.readers import read_table

            frame = read_table(args.file)
            if column not in frame.columns and not args.raw:
                raise FtexpError(f"'{args.file}' has no '{column}' column to fill the prompt "
                                 f"template with; columns are: {', '.join(map(str, frame.columns))}.")
            frame["generation"] = generator.generate(frame.to_dict(orient="records"), args.raw)
            output = args.output or args.run_dir / f"generations_{args.file.stem}.jsonl"
            with atomic.atomic_path(output) as tmp:
                frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
            print(f"wrote {len(frame)} generations to {output}")
        else:
            print("ftexp generate — one prompt per line, Ctrl-D to quit", file=sys.stderr)
            for line in sys.stdin:
                if line.strip():
                    print(generator.generate([{column: line.strip()}], args.raw)[0], flush=True)


if __name__ == "__main__":
    from ftexp.runs.process import run_command

    run_command(main)  # main() reads sys.argv; then exits without the interpreter's teardown
