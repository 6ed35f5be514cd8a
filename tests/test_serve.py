"""Serving: the continuous-batching engine against the plain generator, and the HTTP server with the
official openai client, its errors, a client that disconnects, and a fuzz of malformed requests."""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import httpx
import jax
import numpy as np
import openai
import pytest
import uvicorn

from open_r1_jax.data.chat import ChatTemplate
from open_r1_jax.data.tokenizer import ByteTokenizer
from open_r1_jax.generate import Generator
from open_r1_jax.model import build_model, split_model
from open_r1_jax.serving.api import build_app
from open_r1_jax.serving.engine import Engine, QueueFull, Request, bucket

PROMPTS = [[72, 101, 108, 108, 111, 32, 119], [40, 41, 42], [5] * 20, [9, 8, 7, 6]]
KEY = "sekret"
NAME = "micro"


@pytest.fixture(scope="module")
def weights():
    from micro import micro_config

    cfg = micro_config("model.init_std=0.3", "model.moe.dispatch=dense")  # dropless: rows are independent
    _, params, rest = split_model(build_model(cfg.model))
    return cfg.model, params, rest


def test_engine_equals_the_generator_as_sequences_join_and_leave(weights):
    """Two slots, four requests: some join while others decode, slots are reused; every sequence is
    the generator's (greedy, and sampled with the same seed), and a full queue refuses all-or-none."""
    gen = Generator(*weights)
    engine = Engine(*weights, slots=2, context=64, max_queue=3)
    greedy = [Request(p, 10) for p in PROMPTS]
    engine.submit(greedy[0])
    engine.step()
    engine.step()
    engine.submit(*greedy[1:])
    with pytest.raises(QueueFull):
        engine.submit(Request([1], 4))  # 3 waiting: the queue is full
    while not all(r.done.is_set() for r in greedy):
        engine.step()
    for r, prompt in zip(greedy, PROMPTS):
        assert r.finish == "length" and r.tokens == gen.generate([prompt], 10).tokens[0].tolist()
    alone = Request(PROMPTS[1], 8, temperature=1.0, top_p=0.9, seed=3)
    crowd = [Request(p, 8, temperature=1.0, seed=i) for i, p in enumerate(PROMPTS[2:])]
    for batch in ([alone], [*crowd, Request(PROMPTS[1], 8, temperature=1.0, top_p=0.9, seed=3)]):
        engine.submit(*batch)
        while not all(r.done.is_set() for r in batch):
            engine.step()
    assert batch[-1].tokens == alone.tokens  # a seed gives the same sample whatever shares the batch
    assert alone.tokens != gen.generate([PROMPTS[1]], 8).tokens[0].tolist()  # sampled, not greedy
    stop = Request(PROMPTS[0], 10, stop_ids=(greedy[0].tokens[3],))
    engine.submit(stop)
    while not stop.done.is_set():
        engine.step()
    assert stop.finish == "stop" and stop.tokens == greedy[0].tokens[:3]
    waiting = [Request([1], 2) for _ in range(3)]
    engine.submit(*waiting)  # the queue is full again...
    for r in waiting:
        r.cancel()  # ...until its clients leave: the next step frees their places
    engine.step()
    assert not engine.queue and all(r.finish == "cancelled" and r.done.is_set() for r in waiting)
    with pytest.raises(ValueError, match="exceeds the context of 64"):
        engine.submit(Request([1] * 60, 5))
    assert engine.running == 0 and bucket(17, 64) == 32 and bucket(3, 64) == 16 and bucket(60, 64) == 64


def test_prompts_that_arrive_together_are_prefilled_in_one_call(weights):
    """Three prompts of different lengths: one prefill call of 4 rows (the padding row repeats the
    first), and each sequence is still the generator's."""
    gen = Generator(*weights)
    engine = Engine(*weights, slots=4, context=64)
    real, calls = engine._prefill, []

    def counted(*args):
        calls.append(args[4].shape)  # tokens [R,P]
        return real(*args)

    engine._prefill = counted
    requests = [Request(p, 6) for p in PROMPTS[:3]]
    engine.submit(*requests)
    while not all(r.done.is_set() for r in requests):
        engine.step()
    assert calls == [(4, bucket(max(len(p) for p in PROMPTS[:3]), 64))]
    for r, prompt in zip(requests, PROMPTS):
        assert r.tokens == gen.generate([prompt], 6).tokens[0].tolist()


def test_several_decode_steps_per_call_sample_what_single_steps_do(weights):
    """With the queue empty, one call runs 4 steps; sampled tokens (fold_in of the request's count)
    and a stop inside a call's steps are the same as with one step per call."""
    runs = {}
    for k in (1, 4):
        engine = Engine(*weights, slots=2, context=64, decode_steps=k)
        real, calls = engine._decode, []

        def counted(*args, steps, real=real, calls=calls):
            calls.append(steps)
            return real(*args, steps=steps)

        engine._decode = counted
        sampled = Request(PROMPTS[1], 11, temperature=1.0, top_p=0.9, seed=5)
        greedy = Request(PROMPTS[0], 11)
        engine.submit(sampled, greedy)
        while not (sampled.done.is_set() and greedy.done.is_set()):
            engine.step()
        stop = Request(PROMPTS[0], 11, stop_ids=(greedy.tokens[5],))  # the 6th token: inside a call
        engine.submit(stop)
        while not stop.done.is_set():
            engine.step()
        runs[k] = (sampled.tokens, greedy.tokens, stop.tokens, stop.finish, calls)
    assert runs[4][:4] == runs[1][:4] and runs[1][3] == "stop" and len(runs[1][2]) == 5
    assert set(runs[1][4]) == {1} and runs[4][4].count(4) >= 3  # 10 tokens after the prefill: 4 + 4 + 1 + 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(weights):
    """A live server on a free port: 4 slots, a context of 512 (decode reads 2 of its blocks at most)."""
    engine = Engine(*weights, slots=4, context=512, max_queue=16)
    engine.warmup((1, 20))
    app = build_app(engine, ByteTokenizer(), NAME, ChatTemplate(), api_key=KEY)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", engine, Generator(*weights)
    srv.should_exit = True
    thread.join()


def _greedy(gen, prompt: str, n: int) -> list[int]:
    ids = ByteTokenizer().encode(prompt).tolist()
    return gen.generate([ids], n, stop_ids=(ByteTokenizer.eos_id,)).tokens[0].tolist()


def _greedy_text(gen, prompt: str, n: int) -> str:
    return ByteTokenizer().decode(_greedy(gen, prompt, n))


def test_openai_client_completions_chat_and_streams(server):
    url, engine, gen = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)
    assert [m.id for m in client.models.list()] == [NAME]
    want = _greedy_text(gen, "Hello", 12)
    out = client.completions.create(model=NAME, prompt="Hello", max_tokens=12, temperature=0)
    assert out.choices[0].text == want and out.usage.prompt_tokens == 5
    assert out.usage.completion_tokens == len(_greedy(gen, "Hello", 12))
    streamed = client.completions.create(model=NAME, prompt="Hello", max_tokens=12, temperature=0, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == want and chunks[-1].choices[0].finish_reason is not None

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rendered = ChatTemplate().render(messages, add_generation_prompt=True)
    want_chat = _greedy_text(gen, rendered, 16).split("<|im_end|>")[0]
    chat = client.chat.completions.create(model=NAME, messages=messages, max_tokens=16, temperature=0)
    assert chat.choices[0].message.content == want_chat and chat.choices[0].message.role == "assistant"
    parts = list(
        client.chat.completions.create(model=NAME, messages=messages, max_tokens=16, temperature=0, stream=True)
    )
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == want_chat

    two = client.completions.create(model=NAME, prompt="Hello", max_tokens=10, n=2, seed=5, temperature=1.0)
    again = client.completions.create(model=NAME, prompt="Hello", max_tokens=10, n=2, seed=5, temperature=1.0)
    assert [c.index for c in two.choices] == [0, 1] and [c.text for c in two.choices] == [c.text for c in again.choices]
    stop = want[3:5]
    cut = client.completions.create(model=NAME, prompt="Hello", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == want[: want.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_errors_name_the_problem(server):
    url, engine, _ = server
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=url, timeout=30) as http:
        ok = {"model": NAME, "prompt": "Hi", "max_tokens": 2}
        assert http.post("/v1/completions", json=ok).status_code == 401
        assert http.post("/v1/completions", json=ok, headers={"Authorization": "Bearer nope"}).status_code == 401
        json_type = {**auth, "Content-Type": "application/json"}
        bad_json = http.post("/v1/completions", content=b'{"prompt": "Hi",', headers=json_type)
        assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]
        untyped = http.post("/v1/completions", content=b"prompt=Hi", headers=auth).json()["error"]["message"]
        assert "must be a JSON object" in untyped
        wrong = http.post("/v1/completions", json={**ok, "max_tokens": "many"}, headers=auth).json()["error"]
        assert wrong["param"] == "max_tokens" and "integer" in wrong["message"]
        long = http.post("/v1/completions", json={**ok, "prompt": "x" * 600}, headers=auth)
        assert long.status_code == 400 and "context of 512" in long.json()["error"]["message"]
        assert "logprobs" in http.post("/v1/completions", json={**ok, "logprobs": 2}, headers=auth).text
        assert http.post("/v1/completions", json={**ok, "model": "gpt-9"}, headers=auth).status_code == 404
        assert (
            http.post("/v1/chat/completions", json={"messages": []}, headers=auth).json()["error"]["param"]
            == "messages"
        )
        engine.stop()  # the loop paused: the queue fills up
        waiting = [Request([1], 1) for _ in range(engine.max_queue)]
        engine.submit(*waiting)
        busy = http.post("/v1/completions", json=ok, headers=auth)
        engine.start()
        for r in waiting:
            assert r.done.wait(30)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        health = http.get("/health").json()
        assert health["status"] == "ok" and health["slots"] == 4
        metrics = http.get("/metrics").text
        for name in ("openr1_queue_length", "openr1_running_sequences", "openr1_tokens_per_second"):
            assert name in metrics
        assert (
            "openr1_time_to_first_token_seconds_bucket" in metrics and "openr1_request_latency_seconds_count" in metrics
        )


def _cancelled(url) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('openr1_sequences_total{finish="cancelled"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_client_that_disconnects_frees_its_slot(server):
    url, engine, _ = server
    before = _cancelled(url)
    # greedy: these weights continue "Hi" for all 480 tokens. Sampled (a fresh seed each run), the
    # sequence could draw the end-of-text token before the server sees the client leave, and finish
    # as "stop" instead of "cancelled" (it did once in CI)
    body = {"model": NAME, "prompt": "Hi", "max_tokens": 480, "stream": True, "temperature": 0}
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as http:
        with http.stream("POST", "/v1/completions", json=body) as r:
            next(r.iter_lines())  # the first event: the sequence is running
    deadline = time.time() + 10
    while (engine.running or _cancelled(url) == before) and time.time() < deadline:
        time.sleep(0.02)
    assert engine.running == 0 and _cancelled(url) == before + 1


def test_a_failed_step_fails_its_requests_not_the_server(server, monkeypatch):
    url, engine, gen = server
    real, calls = engine._decode, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return real(*args, **kwargs)

    def flaky_prefill(*args):
        raise MemoryError("no room for the prompt")

    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "Hello", "max_tokens": 12, "temperature": 0}
    with httpx.Client(base_url=url, timeout=60, headers=auth) as http:
        monkeypatch.setattr(engine, "_decode", flaky)
        failed = http.post("/v1/completions", json=body)
        assert failed.status_code == 500 and "device lost" in failed.json()["error"]["message"]
        monkeypatch.setattr(engine, "_prefill", flaky_prefill)  # a prompt that fails to start ends too
        unstarted = http.post("/v1/completions", json=body)
        assert unstarted.status_code == 500 and "no room" in unstarted.json()["error"]["message"]
        monkeypatch.undo()
        again = http.post("/v1/completions", json=body).json()
    assert again["choices"][0]["text"] == _greedy_text(gen, "Hello", 12)


def _fuzz_body(rng: random.Random):
    junk = [None, True, -1, 0, 3.5, 10**12, "", "x" * 300, [], {}, [1, "a"], {"a": 1}, "\u0000\ud7ff"]
    kind = rng.randrange(4)
    if kind == 0:  # not JSON at all
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    body = {"model": NAME, "prompt": "Hi", "max_tokens": rng.randint(1, 3), "temperature": rng.random()}
    if rng.random() < 0.3:
        body = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for _ in range([0, 0, 1, rng.randint(2, 4)][kind]):  # kind 1: a valid request
        key = rng.choice([*body, "n", "stop", "top_p", "seed", "stream", "messages", "prompt", "echo", "zzz"])
        body[key] = rng.choice(junk + [rng.randint(-5, 5)])
    return json.dumps(body).encode()


def test_fuzz_leaves_the_server_answering(server):
    url, engine, gen = server
    rng = random.Random(0)
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    statuses = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        for i in range(1000):
            path = "/v1/chat/completions" if i % 3 == 0 else "/v1/completions"
            status = http.post(path, content=_fuzz_body(rng), headers=auth).status_code
            statuses[status] = statuses.get(status, 0) + 1
        assert all(s < 500 for s in statuses) and statuses.get(400, 0) > 300 and statuses.get(200, 0) > 50, statuses
        out = http.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 12, "temperature": 0}, headers=auth)
    assert out.json()["choices"][0]["text"] == _greedy_text(gen, "Hello", 12)
    deadline = time.time() + 10
    while engine.running and time.time() < deadline:
        time.sleep(0.02)
    assert engine.running == 0 and not engine.queue


def test_sampled_rows_follow_their_settings():
    from open_r1_jax.serving.engine import sample_rows

    logits = jax.random.normal(jax.random.key(0), (3, 50)) * 3
    keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(1), 3)))
    temperature = np.array([0.0, 1.0, 1.0], np.float32)
    top_p = np.array([1.0, 1.0, 1e-6], np.float32)  # row 2: only the most likely token survives
    draws = np.stack([np.asarray(sample_rows(logits, keys, np.full(3, i), temperature, top_p)) for i in range(40)])
    best = np.asarray(logits.argmax(-1))
    assert (draws[:, 0] == best[0]).all() and (draws[:, 2] == best[2]).all() and len(set(draws[:, 1])) > 5


def test_cli_builds_from_a_run_and_refuses_bad_settings(weights, tmp_path, monkeypatch, capsys):
    from micro import micro_config

    from open_r1_jax import serve
    from open_r1_jax.config import to_dict
    from open_r1_jax.export import torch_tensors, write_safetensors

    cfg = micro_config("model.init_std=0.3")
    (tmp_path / "config.json").write_text(json.dumps(to_dict(cfg)))
    _, params, rest = split_model(build_model(cfg.model))
    write_safetensors(torch_tensors({"params": params, "model_state": rest}), tmp_path, 1 << 30)
    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: ran.update(app=app, port=port))
    assert serve.main(["--run", str(tmp_path), "--port", "9", "slots=2", "warmup=false"]) == 0
    assert ran["port"] == 9 and any(r.path == "/v1/chat/completions" for r in ran["app"].routes)
    assert serve.main(["--run", str(tmp_path), "slotz=2"]) == 1
    assert "unknown key 'slotz'" in capsys.readouterr().err
    assert serve.main(["--run", str(tmp_path), "slots=0"]) == 1
