"""python -m ftexp.serve: the OpenAI-compatible server over a tiny trained run, driven by the
official `openai` client against a server started here on a free loopback port. Greedy chat and
completions equal ftexp.generate, streaming yields the same text, requests that arrive together
are batched, and every bad request is an OpenAI-shaped 4xx after which the server still serves."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import colour_facts, compose_config

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

KEY = "test-key"
QUESTION = "What colour is the plum?"


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    from ftexp.train import train

    root = tmp_path_factory.mktemp("serve")
    data = colour_facts(root / "facts.jsonl")
    train(compose_config(["task=causal_lm", "data=code_alpaca", f"data.path={data}", "data.split_column=null",
                          "model=tiny_llama", "adapter=lora", "optimizer.learning_rate=1e-2", "trainer=smoke",
                          "trainer.max_steps=8", "trainer.precision=32", "trainer.enable_progress_bar=false"],
                         output_dir=root / "run"))
    return root / "run"


@pytest.fixture(scope="module")
def server(sft_run: Path):
    from ftexp.serving.app import create_app
    from ftexp.serving.engine import Engine

    engine = Engine.from_path(sft_run, "tiny")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(engine, api_key=KEY, max_tokens_limit=64)
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instance.started
    yield f"http://127.0.0.1:{port}/v1", engine
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0], api_key=KEY, max_retries=0)


def generated(run: Path, row: dict, raw: bool = False) -> str:
    from ftexp.generate import RunGenerator

    generator = RunGenerator(run, {"max_new_tokens": 12, "do_sample": False})
    return generator.generate([{generator.main_column: row}] if isinstance(row, str) else [row], raw)[0]


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_a_greedy_chat_completion_equals_ftexp_generate(client, sft_run):
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                           temperature=0, max_tokens=12)
    assert reply.choices[0].message.content.strip() == generated(sft_run, QUESTION)
    assert reply.usage.completion_tokens >= 1 and reply.usage.prompt_tokens > 5
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_streaming_yields_the_same_text(client):
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12)
    pieces = [chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=12, stream=True)]
    assert len([p for p in pieces if p]) > 1  # several events, not one
    assert "".join(pieces) == whole.choices[0].message.content


def test_completions_take_the_prompt_as_is(client, sft_run):
    prompt = "The sky is"
    reply = client.completions.create(model="tiny", prompt=prompt, temperature=0, max_tokens=12)
    assert reply.choices[0].text.strip() == generated(sft_run, prompt, raw=True)


def test_a_stop_string_ends_the_text_before_it(client):
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12)
    text = whole.choices[0].message.content
    stop = text.strip()[len(text.strip()) // 2:][:2]
    cut = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12,
                                         stop=stop)
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_a_streamed_stop_string_is_never_sent_in_part(client):
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12)
    text = whole.choices[0].message.content
    stop = text.strip()[len(text.strip()) // 2:][:3]
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, temperature=0,
                                                 max_tokens=12, stop=stop, stream=True))
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert "".join(pieces) == text[:text.index(stop)]
    assert not any(stop[:1] in p for p in pieces[-1:] if p)  # no stop-string prefix slipped out last
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_stream_that_runs_out_of_tokens_says_length(client):
    chunks = list(client.completions.create(model="tiny", prompt="The sky is", temperature=0, max_tokens=2,
                                            stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_stream_closed_early_stops_generating(server, sft_run):
    from ftexp.serving.engine import _held_back

    assert _held_back("the sky is bl", ["blue", "x"]) == 2 and _held_back("sky", ["blue"]) == 0
    engine = server[1]
    prompt = engine.completion_ids("The sky is")
    settings = {**engine.settings(60, 0, None, len(prompt)), "min_new_tokens": 60}  # never EOS early
    stream = engine.stream(prompt, settings, [])
    pieces = iter(stream)
    next(pieces)
    pieces.close()  # the client hung up
    with engine.lock:  # released once generation noticed
        assert stream.progress.generated < 30  # of the 60 it was asked for


def test_requests_that_arrive_together_are_generated_as_one_batch(client, server, monkeypatch):
    engine = server[1]
    batches = []
    original = engine.generate
    monkeypatch.setattr(engine, "generate", lambda prompts, *a, **k: batches.append(len(prompts)) or
                        original(prompts, *a, **k))
    questions = [f"What colour is the {thing}?" for thing in ("plum", "sky", "grass", "plum")]
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda q: client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": q}], temperature=0, max_tokens=8), questions))
    assert sum(batches) == 4 and max(batches) > 1  # fewer model calls than requests
    assert replies[0].choices[0].message.content == replies[3].choices[0].message.content


def test_a_wrong_key_is_401(server):
    wrong = openai.OpenAI(base_url=server[0], api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"model": "other"}, openai.NotFoundError, "the model 'other' does not exist; this server serves 'tiny'"),
    ({"max_tokens": 65}, openai.BadRequestError, "max_tokens=65 is over this server's limit of 64"),
    ({"extra_body": {"frobnicate": 1}}, openai.BadRequestError,
     "unrecognized request argument supplied: frobnicate"),
    ({"temperature": 3}, openai.BadRequestError, "temperature"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     openai.BadRequestError, "send one user message"),
])
def test_bad_requests_are_openai_shaped_4xx_and_the_server_lives_on(client, kwargs, error, message):
    request = {"model": "tiny", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4,
               **kwargs}
    with pytest.raises(error) as info:
        client.chat.completions.create(**request)
    assert message in info.value.body["message"] and info.value.body["type"]
    assert client.models.list().data  # still serving


def test_a_prompt_over_the_context_is_refused_with_the_numbers(client, server):
    engine = server[1]
    long = " ".join(["plum"] * (engine.context_length - 10))
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt=long, max_tokens=60)
    assert f"context length is {engine.context_length} tokens" in info.value.body["message"]


def test_malformed_json_is_a_400_not_a_500(server):
    import httpx

    response = httpx.post(f"{server[0]}/chat/completions", content=b"{not json",
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the request body is not valid JSON"


def _serve_in_thread(source: Path, name: str):
    """(base URL, stop) of a server over `source` on a free loopback port, without a key."""
    from ftexp.serving.app import create_app
    from ftexp.serving.engine import Engine

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(Engine.from_path(source, name))
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=instance.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/v1", instance


@pytest.mark.parametrize("kind", ["classification", "reward"])
def test_classifier_and_reward_runs_serve_what_ftexp_predict_writes(kind, tmp_path: Path):
    import httpx
    import pandas as pd

    from conftest import colour_preferences, preference_overrides, sentiment_rows, tiny_overrides
    from ftexp.predict import predict_file
    from ftexp.train import train

    if kind == "classification":
        data = tmp_path / "toy.csv"
        sentiment_rows(64, seed=2).to_csv(data, index=False)
        overrides = tiny_overrides(data, "trainer.max_epochs=1")
        rows = [{"text": t} for t in pd.read_csv(data)["text"][:5]]
    else:
        data = colour_preferences(tmp_path / "pairs.jsonl")
        overrides = preference_overrides(data, "reward", "trainer=smoke")
        responses = ("purple", "green", "it is purple")
        rows = [{"prompt": "What colour is a plum?", "response": r} for r in responses]
    train(compose_config(overrides, output_dir=tmp_path / "run"))
    pd.DataFrame(rows).to_json(tmp_path / "rows.jsonl", orient="records", lines=True)
    expected = predict_file(tmp_path / "run", tmp_path / "rows.jsonl", tmp_path / "predicted.jsonl")
    url, instance = _serve_in_thread(tmp_path / "run", "scorer")
    try:
        route = "predict" if kind == "classification" else "score"
        answer = httpx.post(f"{url}/{route}", json={"model": "scorer", "rows": rows}, timeout=60).json()
        columns = [c for c in expected.columns if c not in rows[0]]
        got = pd.DataFrame(answer["data"])[columns]
        pd.testing.assert_frame_equal(got, expected[columns], check_exact=False, rtol=1e-5)
        missing = httpx.post(f"{url}/predict", json={"model": "scorer", "rows": [{"other": "x"}]}, timeout=60)
        needed = "text" if kind == "classification" else "prompt"
        assert missing.status_code == 400 and needed in missing.json()["error"]["message"], missing.json()
        assert httpx.get(f"{url}/models", timeout=10).status_code == 200
    finally:
        instance.should_exit = True
