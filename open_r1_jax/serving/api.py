"""The HTTP side of the server (FastAPI): the OpenAI routes, server-sent events, errors in OpenAI's
shape, the API key, and the bridge from the engine's thread to each request's asyncio queue.

Every choice of a request is one engine sequence (``n`` x prompts of them, submitted together or not
at all). Text is decoded from the tokens as they come (``generate.TextStreamer``): a stream holds
back an unfinished UTF-8 character and the tail that could still become a stop string, and the
completion is cut at the first stop string. A stream whose client goes away cancels its sequences,
which frees their slots at the engine's next step.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from open_r1_jax.data.chat import END_OF_TURN, ChatTemplate
from open_r1_jax.generate import TextStreamer
from open_r1_jax.serving import engine as eng
from open_r1_jax.serving.schema import ChatRequest, CompletionRequest, Sampling


class APIError(HTTPException):
    def __init__(self, status: int, message: str, param=None, kind="invalid_request_error", headers=None):
        super().__init__(status, message, headers)
        self.param, self.kind = param, kind


def _error(status: int, message: str, param=None, kind="invalid_request_error", headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)


class _Choice:
    """One sequence of a request: its engine request and its text so far."""

    def __init__(self, index: int, request: eng.Request, streamer: TextStreamer):
        self.index, self.request, self.streamer = index, request, streamer

    def delta(self, final: bool) -> str:
        return self.streamer.delta(self.request.tokens, final)

    def text(self) -> str:
        return self.streamer.text(self.request.tokens)[0]


def build_app(
    engine: eng.Engine,
    tokenizer,
    model_name: str,
    template: ChatTemplate | None = None,
    api_key: str = "",
    chat_max_tokens: int = 256,
) -> FastAPI:
    """The app for an engine (started and stopped with the app) and its tokenizer."""
    template = template or ChatTemplate()
    chat_stops = [END_OF_TURN] if END_OF_TURN in template.source else []
    created = int(time.time())

    async def lifespan(app):
        if engine._thread is None:
            engine.start()
        yield
        engine.stop()

    app = FastAPI(title="open-r1-jax", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON: {first.get('msg')} (at {'.'.join(loc) or 0})")
        field = ".".join(loc) or None
        msg = first.get("msg", "invalid").removeprefix("Value error, ")
        if field is None and first.get("type") in ("model_attributes_type", "dict_type"):
            msg = "the body must be a JSON object of the request's fields (Content-Type: application/json)"
        return _error(400, f"{field}: {msg}" if field else msg, param=field)

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        param, kind = getattr(exc, "param", None), getattr(exc, "kind", "invalid_request_error")
        return _error(exc.status_code, str(exc.detail), param, kind, getattr(exc, "headers", None))

    def authorise(request: Request) -> None:
        if not api_key:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer KEY)", kind="authentication_error")

    def choices_for(body: Sampling, prompts: list[list[int]], max_tokens: int, stops: list[str]) -> list[_Choice]:
        if body.model not in (None, model_name):
            raise APIError(404, f"model {body.model!r} does not exist; this server has {model_name!r}", "model")
        seed = body.seed if body.seed is not None else secrets.randbits(31)
        out = []
        for p, ids in enumerate(prompts):
            for j in range(body.n):
                streamer = TextStreamer(tokenizer, stops)
                r = eng.Request(
                    ids,
                    max_tokens,
                    temperature=body.temperature,
                    top_p=body.top_p,
                    seed=(seed + j) % 2**32,  # jax.random.key keeps 32 bits
                    stop_ids=(tokenizer.eos_id,),
                    should_stop=(lambda toks, s=streamer: s.text(toks)[1]) if stops else None,
                )
                out.append(_Choice(p * body.n + j, r, streamer))
        return out

    def submit(choices: list[_Choice], every_token: bool) -> asyncio.Queue:
        """Queue the choices' sequences; their events (choice, finish or None) arrive in the queue,
        one per token for a stream, only the last otherwise (each event wakes the event loop)."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        for c in choices:

            def on_tokens(new, finish, c=c):
                if every_token or finish is not None:
                    loop.call_soon_threadsafe(events.put_nowait, (c, finish))

            c.request.on_tokens = on_tokens
        try:
            engine.submit(*(c.request for c in choices))
        except eng.QueueFull as e:
            raise APIError(429, f"server busy: {e}", kind="rate_limit_error", headers={"Retry-After": "1"}) from e
        except ValueError as e:
            raise APIError(400, str(e), "prompt") from e
        return events

    async def events_of(choices, events: asyncio.Queue, http: Request) -> AsyncIterator[tuple[_Choice, str | None]]:
        """(choice, finish or None) as tokens arrive; cancels every sequence if the client goes away."""
        open_ = len(choices)
        try:
            while open_:
                try:
                    choice, finish = await asyncio.wait_for(events.get(), timeout=0.5)
                except TimeoutError:
                    if await http.is_disconnected():
                        return
                    continue
                open_ -= finish is not None
                yield choice, finish
        finally:
            for c in choices:
                c.request.cancel()

    def encode(text_or_ids) -> list[int]:  # the engine refuses an empty one (Engine.check)
        return list(text_or_ids) if isinstance(text_or_ids, list) else tokenizer.encode(text_or_ids).tolist()

    def usage(prompts, choices) -> dict:
        n_prompt, n_out = sum(map(len, prompts)), sum(len(c.request.tokens) for c in choices)
        return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}

    def check_count(prompts: list[list[int]], n: int) -> None:
        """More sequences than the queue holds could never run (the engine checks each one's length)."""
        if len(prompts) * n > engine.max_queue:
            raise APIError(400, f"n x prompts = {len(prompts) * n} exceeds the queue ({engine.max_queue})", "n")

    def sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def run(http: Request, body: Sampling, prompts, max_tokens, stops, chunk, final):
        check_count(prompts, body.n)
        choices = choices_for(body, prompts, max_tokens, stops)
        events = submit(choices, every_token=body.stream)
        if not body.stream:
            async for _ in events_of(choices, events, http):
                pass
            if failed := [c.request.error for c in choices if c.request.finish == "error"]:
                raise APIError(500, f"generation failed: {failed[0]}", kind="server_error")
            return JSONResponse(final(choices, usage(prompts, choices)))

        async def stream():
            for c in choices:
                if (first := chunk(c, None, None, start=True)) is not None:
                    yield sse(first)
            async for c, finish in events_of(choices, events, http):
                if finish == "error":  # OpenAI's servers end a failed stream with an error event
                    yield sse({"error": {"message": f"generation failed: {c.request.error}", "type": "server_error"}})
                    return
                text = c.delta(final=finish is not None)
                if text:
                    yield sse(chunk(c, text, None))
                if finish is not None:
                    yield sse(chunk(c, None, "length" if finish == "length" else "stop"))
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.post("/v1/completions", dependencies=[Depends(authorise)])
    async def completions(body: CompletionRequest, http: Request):
        prompts = [encode(p) for p in body.prompts()]
        ident, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "object": "text_completion", "created": now, "model": model_name}

        def chunk(c, text, finish, start=False):
            if start:
                return None
            choice = {"index": c.index, "text": text or "", "logprobs": None, "finish_reason": finish}
            return {**head, "choices": [choice]}

        def final(choices, use):
            out = [{"index": c.index, "text": c.text(), "logprobs": None, "finish_reason": _reason(c)} for c in choices]
            return {**head, "choices": out, "usage": use}

        return await run(http, body, prompts, body.max_tokens or 16, body.stops(), chunk, final)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorise)])
    async def chat(body: ChatRequest, http: Request):
        try:
            text = template.render([m.model_dump() for m in body.messages], add_generation_prompt=True)
        except ValueError as e:
            raise APIError(400, f"messages: {e}", "messages") from e
        prompts = [encode(text)]
        limit = body.max_completion_tokens or body.max_tokens
        max_tokens = limit or max(1, min(chat_max_tokens, engine.context - len(prompts[0])))
        ident, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": ident, "object": "chat.completion.chunk", "created": now, "model": model_name}

        def chunk(c, text, finish, start=False):
            delta = {"role": "assistant", "content": ""} if start else ({"content": text} if text else {})
            return {**head, "choices": [{"index": c.index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        def final(choices, use):
            out = [
                {"index": c.index, "message": {"role": "assistant", "content": c.text()}, "finish_reason": _reason(c)}
                for c in choices
            ]
            return {**head, "object": "chat.completion", "choices": out, "usage": use}

        return await run(http, body, prompts, max_tokens, body.stops() + chat_stops, chunk, final)

    @app.get("/v1/models", dependencies=[Depends(authorise)])
    async def models():
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "open-r1-jax"}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "slots": engine.n_slots, "running": engine.running, "queue": len(engine.queue)}

    @app.get("/metrics")
    async def metrics():
        return Response(engine.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app


def _reason(c: _Choice) -> str:
    return "length" if c.request.finish == "length" else "stop"
