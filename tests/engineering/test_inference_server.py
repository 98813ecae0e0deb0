"""The OpenAI-compatible server: the official ``openai`` client (streaming and not, ``n`` samples), 4xx JSON
errors, a cancelled stream frees its blocks, a small bounded load test, and ``llmcore serve`` bad input."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import openai
import pytest

from llmcore.architecture.book_lm import load_book_lm
from llmcore.architecture.generate import SamplerConfig
from llmcore.cli import main as cli_main
from llmcore.engineering.inference import Engine, EngineConfig
from llmcore.engineering.inference.server import MODEL_NAME, BackgroundServer, chat_prompt_ids, load_test


@pytest.fixture(scope="module")
def server():
    lm = load_book_lm()
    with BackgroundServer(lm.model.eval(), lm.tokenizer, EngineConfig(num_blocks=128, block_size=8)) as srv:
        srv.lm = lm
        yield srv
    assert not srv.thread.is_alive() and not srv.engine.thread.is_alive()  # nothing left running


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _idle(srv, timeout: float = 10.0) -> dict:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        st = srv.engine.stats()
        if st["running"] == 0 and st["waiting"] == 0 and srv.engine.inbox.empty():
            return st
        time.sleep(0.02)
    raise AssertionError(f"engine still busy: {st}")


def test_openai_client_streams_and_matches_the_engine(server):
    client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    prompt = "def read_file(path):"
    full = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0)
    pieces = [c.choices[0].text for c in client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12,
                                                                   temperature=0, stream=True)]
    assert "".join(pieces) == full.choices[0].text and len(pieces) > 1
    # the same greedy tokens straight from an engine (no HTTP): the server adds transport only
    lm = server.lm
    eng = Engine(lm.model, EngineConfig(num_blocks=32))
    req = eng.add_request(lm.tokenizer.encode(prompt), 12, eos_id=lm.model.config.eos_id)
    eng.run()
    assert full.choices[0].text == lm.tokenizer.decode([t for t in req.output if t != lm.model.config.eos_id])
    assert full.usage.completion_tokens == len(req.output)
    msgs = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Open a file."}]
    chat = client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=8, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason in ("length", "stop")
    ids = chat_prompt_ids(lm.tokenizer, [type("M", (), m) for m in msgs])
    assert chat.usage.prompt_tokens == len(ids) and ids[0] == lm.tokenizer.special["<bos>"]


def test_n_samples_equal_independent_seeded_requests(server):
    """``n = 3``: three choices (streamed or not), choice ``i`` = an engine request sampled with seed ``seed + i``."""
    client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
    kw = dict(model=MODEL_NAME, prompt="def read_file(path):", max_tokens=8, temperature=0.9, top_p=0.95, seed=3, n=3)
    full = client.completions.create(**kw)
    assert [c.index for c in full.choices] == [0, 1, 2] and full.usage.completion_tokens == 3 * 8
    streamed = ["", "", ""]
    for chunk in client.completions.create(**kw, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    assert streamed == [c.text for c in full.choices]
    lm, eos = server.lm, server.lm.model.config.eos_id
    eng = Engine(lm.model, EngineConfig(num_blocks=32))
    sampler = SamplerConfig(greedy=False, temperature=0.9, top_p=0.95)
    reqs = [eng.add_request(lm.tokenizer.encode(kw["prompt"]), 8, sampler, eos_id=eos, seed=3 + i) for i in range(3)]
    eng.run()
    assert [lm.tokenizer.decode([t for t in r.output if t != eos]) for r in reqs] == [c.text for c in full.choices]
    assert len({c.text for c in full.choices}) == 3
    for bad in (0, 17):
        code, err = _post(server.url + "/completions", json.dumps({**kw, "n": bad}).encode())
        assert code == 400 and err["error"]["param"] == "n"
    assert _idle(server)["leaked_blocks"] == 0


def test_bad_requests_get_4xx_json(server):
    url = server.url
    cases = [(b"{not json", 400), (json.dumps({"model": MODEL_NAME}).encode(), 400),  # prompt missing
             (json.dumps({"model": "gpt-9", "prompt": "x"}).encode(), 404),
             (json.dumps({"model": MODEL_NAME, "prompt": "x", "max_tokens": -3}).encode(), 400),
             (json.dumps({"model": MODEL_NAME, "prompt": "x " * 2000}).encode(), 400),
             (json.dumps({"model": MODEL_NAME, "prompt": "x", "temperature": 7}).encode(), 400)]
    for body, status in cases:
        code, err = _post(url + "/completions", body)
        assert code == status and set(err["error"]) == {"message", "type", "param", "code"}, (body, code, err)
    code, err = _post(url + "/chat/completions", json.dumps(
        {"model": MODEL_NAME, "messages": [{"role": "robot", "content": "hi"}]}).encode())
    assert code == 400 and "robot" in err["error"]["message"]
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="x")
    assert _idle(server)["free_blocks"] == 128  # nothing was admitted


def test_cancelled_stream_frees_its_blocks(server):
    client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
    stream = client.completions.create(model=MODEL_NAME, prompt="import os\n" * 20, max_tokens=400, temperature=0,
                                       stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert server.engine.engine.m.num_free < 128  # still holding its blocks mid-stream
    stream.close()
    st = _idle(server)
    assert st["free_blocks"] == 128 and st["leaked_blocks"] == 0
    assert server.engine.engine.aborted == 1  # freed by the abort, not by running to max_tokens


def test_bounded_load_no_failures_no_leaks(server):
    res = load_test(server.url, [f"def f{k}(x):" for k in range(32)], [4 + k % 6 for k in range(32)], concurrency=8)
    assert not res.failures and len(res.ttft) == 32 and len(res.tpot) == 32
    assert all(0 < t < 30 for t in res.ttft + res.tpot)
    st = _idle(server)
    assert st["free_blocks"] == 128 and st["leaked_blocks"] == 0


def test_serve_cli_bad_input_is_one_line(capsys):
    assert cli_main(["serve", "--port", "70000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--port" in err and "\n" not in err
    with pytest.raises(SystemExit) as ex:
        cli_main(["serve", "--port", "eighty"])
    assert ex.value.code == 2 and "\n" not in capsys.readouterr().err.strip()
