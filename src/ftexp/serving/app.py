"""The OpenAI-compatible HTTP app over an Engine: /v1/models, /v1/chat/completions and
/v1/completions, streamed (server-sent events, OpenAI's chunk format) or not. Every failure is an
OpenAI-shaped error body with a 4xx status (5xx only for a fault of the server itself), and the
server keeps serving."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ftexp.serving.engine import Batcher, Completion, Engine, Stream
from ftexp.serving.predictor import Predictor
from ftexp.serving.schemas import ChatRequest, CompletionRequest, PredictRequest, RequestError, error_body


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, kind, param, code)


def create_app(engine: Engine | Predictor, api_key: str | None = None, max_tokens_limit: int = 4096,
               max_batch: int = 8) -> FastAPI:
    """The app; `api_key`: every request must carry `Authorization: Bearer <key>`. A language
    model gets the completion routes, a classifier / regressor / reward run /v1/predict (also
    /v1/score)."""
    app = FastAPI(title=f"ftexp serve: {engine.name}", docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"msg": "invalid request", "loc": ()}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = ("the request body is not valid JSON" if first.get("type") == "json_invalid"
                   else f"{where}: {first['msg']}" if where else str(first["msg"]))
        if first.get("type") == "extra_forbidden":
            message = f"unrecognized request argument supplied: {where}"
        return JSONResponse(error_body(message, param=where or None), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(err.detail), kind), status_code=err.status_code)

    @app.exception_handler(Exception)
    async def fault(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"the server failed on this request: {type(err).__name__}: {err}",
                                       "server_error"), status_code=500)

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Any:
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return JSONResponse(error_body("incorrect API key provided", "invalid_request_error",
                                               code="invalid_api_key"), status_code=401)
        return await call_next(request)

    def check_model(name: str) -> None:
        if name != engine.name:
            raise APIError(404, f"the model '{name}' does not exist; this server serves "
                                f"'{engine.name}'", "not_found_error", "model", "model_not_found")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0,
                                            "owned_by": "ftexp"}]}

    if isinstance(engine, Predictor):
        async def predict(body: PredictRequest) -> dict[str, Any]:
            check_model(body.model)
            try:
                rows = await asyncio.to_thread(engine.predict, body.rows)
            except RequestError as err:
                raise APIError(400, str(err), param=err.param) from err
            return {"object": "list", "model": engine.name, "task": engine.kind, "data": rows}

        app.post("/v1/predict")(predict)
        app.post("/v1/score")(predict)  # a reward run's scores, by the name scoring APIs use
        return app
    batcher = Batcher(engine, max_batch=max_batch)

    def check(body: ChatRequest | CompletionRequest, prompt: list[int]) -> dict[str, Any]:
        check_model(body.model)
        if body.max_tokens is not None and body.max_tokens > max_tokens_limit:
            raise APIError(400, f"max_tokens={body.max_tokens} is over this server's limit of "
                                f"{max_tokens_limit}", param="max_tokens")
        try:
            return engine.settings(body.max_tokens, body.temperature, body.top_p, len(prompt))
        except RequestError as err:
            raise APIError(400, str(err), param=err.param) from err

    def prompt_of(build: Any, *args: Any) -> list[int]:
        try:
            return build(*args)
        except RequestError as err:
            raise APIError(400, str(err), param=err.param) from err

    async def answer(body: ChatRequest | CompletionRequest, prompt: list[int], chat: bool) -> Any:
        settings = check(body, prompt)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.stream:
            pieces = engine.stream(prompt, settings, body.stops(), body.seed)
            return StreamingResponse(_events(pieces, ident, created, engine.name, chat),
                                     media_type="text/event-stream")
        job = batcher.submit(prompt, settings, body.stops(), body.seed)
        result: Completion = await asyncio.wrap_future(job)
        choice: dict[str, Any] = {"index": 0, "finish_reason": result.finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                 "total_tokens": result.prompt_tokens + result.completion_tokens}
        return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": engine.name, "choices": [choice], "usage": usage}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> Any:
        messages = [m.model_dump() for m in body.messages]
        return await answer(body, prompt_of(engine.chat_ids, messages), chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        return await answer(body, prompt_of(engine.completion_ids, body.prompt), chat=False)

    return app


def _events(pieces: Stream, ident: str, created: int, model: str, chat: bool) -> Iterator[str]:
    """OpenAI's stream: one `data: {chunk}` event per piece of text, a last chunk with the
    finish reason, then `data: [DONE]`. A failure mid-stream ends it with an error event."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: dict[str, Any] | str, finish: str | None) -> str:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta
        body = {"id": ident, "object": kind, "created": created, "model": model, "choices": [choice]}
        return f"data: {json.dumps(body)}\n\n"

    try:
        if chat:
            yield chunk({"role": "assistant", "content": ""}, None)
        for piece in pieces:
            yield chunk({"content": piece} if chat else piece, None)
        yield chunk({} if chat else "", pieces.finish_reason)
    except Exception as err:  # the client sees why; the server goes on
        yield f"data: {json.dumps(error_body(f'generation failed: {err}', 'server_error'))}\n\n"
    yield "data: [DONE]\n\n"
