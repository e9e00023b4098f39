"""The OpenAI request bodies the server accepts (the fields it honours; any other field is a 400,
as OpenAI answers unknown parameters) and the error body it answers with."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)  # one choice per request
    user: Optional[str] = None  # accepted and ignored, as OpenAI's own servers log it only

    def stops(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Request):
    prompt: str


class PredictRequest(BaseModel):
    """Rows for a classifier, regressor or reward run: each a mapping of the run's columns."""
    model_config = ConfigDict(extra="forbid")

    model: str
    rows: list[dict[str, Any]] = Field(min_length=1, max_length=1024)


class RequestError(ValueError):
    """A request the model cannot serve as asked (answered 400 with this message)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
