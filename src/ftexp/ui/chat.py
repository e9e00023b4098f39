"""The chat page's side of the web UI, without any UI package: a finished run answers through the
serving code (ftexp.serving), so the page shows what `python -m ftexp.serve` would send. A language
model replies to the conversation; a classifier, regressor or reward run shows its prediction
for the message as the text of its first text column."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from ftexp.runs.errors import FtexpError
from ftexp.serving.schemas import RequestError


class Chats:
    """The served models of the runs chatted with, each loaded on first use and kept."""

    def __init__(self) -> None:
        self._served: dict[Path, Any] = {}
        self._lock = threading.Lock()

    def served(self, run: Path) -> Any:
        from ftexp.serving.engine import Engine

        run = Path(run).resolve()
        with self._lock:
            if run not in self._served:
                self._served[run] = Engine.from_path(run)
            return self._served[run]

    def reply(self, run: Path, history: list[dict[str, str]], message: str, max_tokens: int = 64,
              temperature: float = 0.0) -> str:
        """The run's answer to `message` after `history` ([{role, content}], as Chatbot keeps it)."""
        from ftexp.serving.predictor import Predictor

        if not message.strip():
            raise FtexpError("type a message first.")
        served = self.served(run)
        try:
            if isinstance(served, Predictor):
                return _prediction(served, message)
            # A run trained on single instructions (a prompt template) answers each message on its own.
            messages = [] if served.single_turn else [{"role": m["role"], "content": _text(m["content"])}
                                                      for m in history]
            prompt = served.chat_ids([*messages, {"role": "user", "content": message}])
            settings = served.settings(max_tokens, temperature, None, len(prompt))
            return served.generate([prompt], settings, [])[0].text
        except RequestError as err:
            raise FtexpError(str(err)) from err


def _text(content: Any) -> str:
    """Chatbot content as text: a string, or a list of parts whose text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _prediction(predictor: Any, message: str) -> str:
    column = list(predictor.cfg.data.text_columns)[0]
    row = predictor.predict([{column: message}])[0]
    return "```json\n" + json.dumps(row, indent=1, default=float) + "\n```"
