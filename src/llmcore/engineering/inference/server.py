r"""An OpenAI-compatible HTTP server over the engine (FastAPI + uvicorn): ``llmcore serve --port 8000``.

Endpoints (the subset of the OpenAI API the book's agents use):

* ``GET /v1/models`` -- the one served model;
* ``POST /v1/completions`` -- ``prompt`` (a string), ``max_tokens``, ``temperature`` (0 = greedy),
  ``top_p``, ``seed``, ``n`` (parallel samples sharing the prompt's KV blocks; choice ``i`` samples with seed
  ``seed + i``), ``stream``;
* ``POST /v1/chat/completions`` -- ``messages`` rendered with the book's chat tokens
  (``<bos><|system|>...<|user|>...<|assistant|>``), same sampling fields, ``stream``;
* ``GET /stats`` (not OpenAI) -- free/total KV blocks, running and waiting requests.

Streaming is Server-Sent Events: one ``data: {chunk}`` line per new text piece, then ``data: [DONE]``.
Bad requests (malformed JSON, a missing or mistyped field, an unknown model, ``max_tokens < 1``, a prompt
longer than the context) get a 4xx with OpenAI's JSON error body ``{"error": {"message", "type",
"param", "code"}}``; the server never crashes on them.

**Threads.** The engine is not thread-safe and its steps are blocking: one engine thread owns it, takes
``add``/``abort`` commands from a queue, steps while there is work, and hands each new token to the
request's ``asyncio.Queue`` on the event loop (``call_soon_threadsafe``). A client that disconnects
mid-stream cancels its response generator, which sends ``abort``: the request's blocks return to the
pool at the engine's next step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from llmcore.architecture.book_lm import load_book_lm
from llmcore.architecture.generate import SamplerConfig
from llmcore.core.errors import LLMCoreError
from llmcore.engineering.inference.scheduler import Engine, EngineConfig

MODEL_NAME = "llmcore-book-lm"


# ---- the engine in its own thread ------------------------------------------------------------------
@dataclass(eq=False)
class _Stream:
    """Where one request's tokens go: an asyncio queue on the server's event loop."""

    loop: asyncio.AbstractEventLoop
    q: asyncio.Queue
    req: object = None
    open_samples: int = 1  # samples (choices) not finished yet

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.q.put_nowait, item)


class EngineThread:
    """Runs an :class:`~.scheduler.Engine` in one background thread; coroutines talk to it by commands."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.inbox: queue.Queue = queue.Queue()
        self.streams: dict[int, _Stream] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="llmcore-engine", daemon=True)
        self.thread.start()

    def submit(self, stream: _Stream, prompt: list[int], max_tokens: int, sampler: SamplerConfig,
               seed: int | None, n: int = 1) -> None:
        self.inbox.put(("add", stream, prompt, max_tokens, sampler, seed, n))

    def abort(self, stream: _Stream) -> None:
        self.inbox.put(("abort", stream))

    def stats(self) -> dict:
        e = self.engine
        return {"num_blocks": e.cfg.num_blocks, "free_blocks": e.m.num_free, "running": len(e.running),
                "waiting": len(e.waiting), "swapped": len(e.swapped), "finished": len(e.finished),
                "preemptions": e.preemptions, "swaps": e.swaps, "cow_copies": e.m.copies,
                "leaked_blocks": e.leaked_blocks() if not e.has_work else None}

    def close(self) -> None:
        self._stop.set()
        self.inbox.put(("stop",))
        self.thread.join(timeout=10)

    def _handle(self, cmd) -> None:
        if cmd[0] == "add":
            _, stream, prompt, max_tokens, sampler, seed, n = cmd
            try:
                stream.req = self.engine.add_request(prompt, max_tokens, sampler,
                                                     eos_id=self.engine.model.config.eos_id, seed=seed, n=n)
                stream.open_samples = n
                self.streams[stream.req.rid] = stream
            except LLMCoreError as e:
                stream.put(("error", str(e)))
        elif cmd[0] == "abort":
            stream = cmd[1]
            if stream.req is not None:
                self.engine.abort(stream.req)
                self.streams.pop(stream.req.rid, None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:  # block while idle, poll while busy
                cmd = self.inbox.get(timeout=None if not self.engine.has_work else 0.0)
                self._handle(cmd)
                while True:
                    self._handle(self.inbox.get_nowait())
            except queue.Empty:
                pass
            if self._stop.is_set():
                break
            if self.engine.has_work:
                for req, tok in self.engine.step():
                    root = req.parent or req  # parallel samples report to their request's stream
                    stream = self.streams.get(root.rid)
                    if stream is not None:
                        stream.put(("token", req.index, tok, req.finish_reason))
                        if req.finish_reason is not None:
                            stream.open_samples -= 1
                            if stream.open_samples == 0:
                                self.streams.pop(root.rid, None)


# ---- request bodies --------------------------------------------------------------------------------
class _Sampling(BaseModel):
    model: str
    max_tokens: int = 16
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False


class CompletionRequest(_Sampling):
    prompt: str


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def chat_prompt_ids(tokenizer, messages: list[ChatMessage]) -> list[int]:
    """``<bos>`` + ``<|role|>content`` per message + ``<|assistant|>`` (the book's chat tokens)."""
    ids = [tokenizer.special["<bos>"]]
    for msg in messages:
        tag = f"<|{msg.role}|>"
        if tag not in tokenizer.special:
            raise APIError(400, f"unknown role {msg.role!r}; valid: system, user, assistant, tool", "messages")
        ids += [tokenizer.special[tag], *tokenizer.encode(msg.content)]
    return ids + [tokenizer.special["<|assistant|>"]]


def create_app(model, tokenizer, engine_cfg: EngineConfig | None = None, model_name: str = MODEL_NAME) -> FastAPI:
    """The FastAPI app serving ``model`` (the kit's ``Llama``) through a fresh engine."""
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state["engine"] = EngineThread(Engine(model, engine_cfg or EngineConfig()))
        yield
        state["engine"].close()

    app = FastAPI(title="llmcore inference server", lifespan=lifespan)
    app.state.inference = state
    max_len = model.config.max_seq_len

    @app.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg = "the request body is not valid JSON"
        return JSONResponse(_error_body(f"{msg}" + (f" ({param})" if param else ""), 400, param), status_code=400)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(_error_body(exc.message, exc.status, exc.param, exc.code), status_code=exc.status)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "llmcore"}]}

    @app.get("/stats")
    async def stats():
        return state["engine"].stats()

    def _check(body: _Sampling, prompt: list[int]) -> SamplerConfig:
        if body.model != model_name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server serves {model_name!r}",
                           "model", "model_not_found")
        if body.max_tokens < 1:
            raise APIError(400, f"max_tokens must be >= 1, got {body.max_tokens}", "max_tokens")
        if len(prompt) + 1 > max_len:
            raise APIError(400, f"the prompt has {len(prompt)} tokens; the context holds {max_len}", "prompt",
                           "context_length_exceeded")
        if body.temperature == 0:
            return SamplerConfig(greedy=True)
        return SamplerConfig(greedy=False, temperature=body.temperature, top_p=body.top_p)

    async def _tokens(prompt: list[int], body: _Sampling,
                      sampler: SamplerConfig) -> AsyncIterator[tuple[int, str, str]]:
        """Yield ``(choice index, text piece, finish reason or "")`` for the ``n`` samples; aborts the request if
        the consumer goes away."""
        loop = asyncio.get_running_loop()
        stream = _Stream(loop, asyncio.Queue())
        eng = state["engine"]
        eng.submit(stream, prompt, min(body.max_tokens, max_len - len(prompt)), sampler, body.seed, body.n)
        out, sent, finished = [[] for _ in range(body.n)], [""] * body.n, set()
        try:
            while len(finished) < body.n:
                item = await stream.q.get()
                if item[0] == "error":
                    raise APIError(400, item[1])
                _, i, tok, reason = item
                if reason is not None:
                    finished.add(i)
                if tok != model.config.eos_id:
                    out[i].append(tok)
                text = tokenizer.decode(out[i])
                if text.endswith("\ufffd") and reason is None:  # half of a multi-byte character: wait for the rest
                    continue
                piece, sent[i] = text[len(sent[i]):], text
                yield i, piece, (reason or "")
        finally:
            if len(finished) < body.n:
                eng.abort(stream)

    def _usage(prompt: list[int], n: int) -> dict:
        return {"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n}

    async def _respond(kind: str, body: _Sampling, prompt: list[int]):
        sampler = _check(body, prompt)
        rid, created = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"
        if body.stream:
            async def events():
                seen = set()
                async for i, piece, reason in _tokens(prompt, body, sampler):
                    if kind == "chat":
                        delta = {"content": piece} if i in seen else {"role": "assistant", "content": piece}
                        choice = {"index": i, "delta": delta, "finish_reason": reason or None}
                    else:
                        choice = {"index": i, "text": piece, "finish_reason": reason or None, "logprobs": None}
                    seen.add(i)
                    chunk = {"id": rid, "object": obj + (".chunk" if kind == "chat" else ""), "created": created,
                             "model": model_name, "choices": [choice]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        text, reason, n = [""] * body.n, [""] * body.n, 0
        async for i, piece, r in _tokens(prompt, body, sampler):
            text[i], reason[i], n = text[i] + piece, r, n + 1
        if kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r}
                       for i, (t, r) in enumerate(zip(text, reason))]
        else:
            choices = [{"index": i, "text": t, "finish_reason": r, "logprobs": None}
                       for i, (t, r) in enumerate(zip(text, reason))]
        return {"id": rid, "object": obj, "created": created, "model": model_name, "choices": choices,
                "usage": _usage(prompt, n)}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        return await _respond("text", body, tokenizer.encode(body.prompt))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        return await _respond("chat", body, chat_prompt_ids(tokenizer, body.messages))

    return app


# ---- running it ------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """uvicorn serving :func:`create_app` in a thread of this process (tests, the chapter's load test);
    ``with BackgroundServer(...) as srv: srv.url`` -- always shut down on exit."""

    def __init__(self, model, tokenizer, engine_cfg: EngineConfig | None = None, host: str = "127.0.0.1",
                 port: int | None = None) -> None:
        import uvicorn  # the server's own dependency (the `serve` extra)

        self.host, self.port = host, port or free_port(host)
        self.app = create_app(model, tokenizer, engine_cfg)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="llmcore-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def engine(self) -> EngineThread:
        return self.app.state.inference["engine"]

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        t0 = time.perf_counter()
        while not self.server.started:
            if not self.thread.is_alive() or time.perf_counter() - t0 > 30:
                raise LLMCoreError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (as the llmcore CLI)
        self.exit(2, f"error: {message} (see llmcore serve --help)\n")


class ServerProcess:
    """``llmcore serve`` as a child process (``python -m llmcore.engineering.inference.server``) on a free
    localhost port: ``with ServerProcess() as srv: srv.url``; waits until it answers, always stops it."""

    def __init__(self, port: int | None = None, extra_args: tuple[str, ...] = (), timeout: float = 60.0) -> None:
        self.port, self.extra, self.timeout = port or free_port(), extra_args, timeout
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "llmcore.engineering.inference.server", "--port", str(self.port), *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.timeout:
            if self.proc.poll() is not None:
                raise LLMCoreError(f"the server exited: {self.proc.stderr.read().strip()[-300:]}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise LLMCoreError(f"the server did not answer on {self.url} within {self.timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


@dataclass
class LoadResult:
    """Per-request TTFT and TPOT (seconds) seen by the clients, and the failures."""

    ttft: list[float]
    tpot: list[float]
    failures: list[str]
    wall_s: float


def load_test(url: str, prompts: list[str], max_tokens: list[int], concurrency: int = 8) -> LoadResult:
    """``concurrency`` client threads stream ``prompts`` (greedy) through the official ``openai`` client; TTFT =
    request sent -> first chunk, TPOT = mean gap between later chunks."""
    import openai  # the serve extra's client

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
    todo = queue.Queue()
    for item in zip(prompts, max_tokens):
        todo.put(item)
    ttft, tpot, failures, lock = [], [], [], threading.Lock()

    def worker() -> None:
        while True:
            try:
                prompt, n = todo.get_nowait()
            except queue.Empty:
                return
            try:
                t0, times = time.perf_counter(), []
                for _ in client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=n, temperature=0,
                                                   stream=True):
                    times.append(time.perf_counter())
                with lock:
                    ttft.append(times[0] - t0)
                    if len(times) > 1:
                        tpot.append((times[-1] - times[0]) / (len(times) - 1))
            except Exception as e:  # noqa: BLE001 -- a load test counts every failure
                with lock:
                    failures.append(f"{type(e).__name__}: {e}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return LoadResult(ttft, tpot, failures, time.perf_counter() - t0)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="llmcore serve", description="Serve the book LM with an OpenAI-compatible API.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--num-blocks", type=int, default=512, help="KV blocks in the pool (default: 512)")
    p.add_argument("--block-size", type=int, default=8, help="positions per KV block (default: 8)")
    p.add_argument("--max-num-seqs", type=int, default=32, help="running requests at most (default: 32)")
    p.add_argument("--prefix-cache", action="store_true", help="enable the radix prefix cache")
    p.add_argument("--preemption", choices=("recompute", "swap"), default="recompute",
                   help="how a request is preempted when blocks run out (default: recompute)")
    p.add_argument("--swap-blocks", type=int, default=256, help="host-side swap pool, in blocks (default: 256)")
    return p


def serve_main(argv: list[str] | None = None) -> int:
    """``llmcore serve ...``: validate, load the book LM, run uvicorn in the foreground until Ctrl-C."""
    import uvicorn

    from llmcore.core.device import pick_device

    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        raise LLMCoreError(f"--port must be in 1..65535, got {args.port}")
    cfg = EngineConfig(num_blocks=args.num_blocks, block_size=args.block_size, max_num_seqs=args.max_num_seqs,
                       prefix_cache=args.prefix_cache, preemption=args.preemption, swap_blocks=args.swap_blocks)
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind((args.host, args.port))
        except OSError as e:
            raise LLMCoreError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    lm = load_book_lm(pick_device(args.device))
    print(f"serving {MODEL_NAME} on http://{args.host}:{args.port}/v1 (Ctrl-C stops)", flush=True)
    uvicorn.run(create_app(lm.model.eval(), lm.tokenizer, cfg), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":  # pragma: no cover  (python -m llmcore.engineering.inference.server --port N)
    try:
        sys.exit(serve_main())
    except LLMCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
