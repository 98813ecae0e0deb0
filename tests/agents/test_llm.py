"""The LLM interface: tool-call parsing (hand cases), the bounded retry budget, and the backends against
the real libraries (the official ``openai`` client on the book's own server, HF ``transformers``)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch
from openai.types.chat import ChatCompletionMessageToolCall

from llmcore.agents import llm
from llmcore.architecture.book_lm import book_lm_path, load_book_lm
from llmcore.core.errors import LLMCoreError
from llmcore.engineering.inference.server import BackgroundServer, ChatMessage, chat_prompt_ids

TOOLS = [llm.function_schema("lookup", "value of a key", key=("string", "the key")),
         llm.function_schema("calculator", "evaluate arithmetic", expression=("string", "e.g. 3 * 4"))]
CONVS = [[{"role": "user", "content": "What is 3+4?"}],
         [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "def read_file(path):"}]]


@pytest.fixture(scope="module")
def book():
    return load_book_lm()


# ---- parsing: hand cases ----------------------------------------------------------------------------------
def test_parse_valid_action_with_thought():
    text, call = llm.parse_reply('Thought: need the value\nAction: {"name": "lookup", "arguments": {"key": "ab"}}',
                                 TOOLS)
    assert text == "Thought: need the value" and call == llm.ToolCall("lookup", {"key": "ab"})


def test_parse_arguments_as_json_string_and_text_reply():
    _, call = llm.parse_reply('Action: {"name": "calculator", "arguments": "{\\"expression\\": \\"1+2\\"}"}', TOOLS)
    assert call.arguments == {"expression": "1+2"}
    assert llm.parse_reply("Answer: 42", TOOLS) == ("Answer: 42", None)


@pytest.mark.parametrize("bad, why", [
    ('Action: {"name": "lookup", "arguments": {"key": "ab"', "not JSON"),
    ('Action: {"name": "search", "arguments": {"q": "x"}}', "unknown tool"),
    ('Action: {"name": "lookup", "arguments": {}}', "misses argument"),
    ('Action: {"name": "lookup", "arguments": {"key": 3}}', "must be string"),
    ('Action: {"name": "lookup", "arguments": {"key": "a", "x": 1}}', "unknown argument"),
    ('Action: {"tool": "lookup"}', "needs \"name\""),
    ("Action:", "not JSON"),
])
def test_parse_malformed(bad, why):
    with pytest.raises(llm.MalformedOutput, match=why):
        llm.parse_reply(bad, TOOLS)


def test_tool_call_is_openai_format():
    """Our call round-trips through the openai library's own pydantic model of a tool call."""
    call = llm.ToolCall("lookup", {"key": "ab"}, "call_7")
    parsed = ChatCompletionMessageToolCall.model_validate(call.to_openai())
    assert parsed.function.name == "lookup" and json.loads(parsed.function.arguments) == {"key": "ab"}
    assert llm.message_text(llm.Reply("hm", call, "").message()) == 'hm\nAction: {"name": "lookup", "arguments": {"key": "ab"}}'


def test_bad_input_is_one_llmcore_error():
    with pytest.raises(LLMCoreError, match="type must be"):
        llm.function_schema("f", "d", x=("str", "wrong type name"))
    with pytest.raises(LLMCoreError, match="unknown role"):
        llm.message_text({"role": "robot", "content": "hi"})
    with pytest.raises(LLMCoreError, match="max_retries"):
        llm.ScriptedLM(lambda m, a: "", max_retries=-1)


# ---- the retry budget ---------------------------------------------------------------------------------------
def test_retry_until_valid_then_stop():
    seen = []

    def script(messages, attempt):
        seen.append(attempt)
        return "Action: {oops" if attempt < 2 else 'Action: {"name": "lookup", "arguments": {"key": "k"}}'
    r = llm.ScriptedLM(script, max_retries=3).chat(CONVS[0], TOOLS)
    assert seen == [0, 1, 2] and r.attempts == 3 and r.retries == 2 and not r.failed
    assert r.tool_call.name == "lookup" and len(r.errors) == 2


def test_budget_exhausted_is_reported_not_raised():
    calls = []
    lm = llm.ScriptedLM(lambda m, a: calls.append(a) or "I think so.", max_retries=2)
    r = lm.chat(CONVS[0], TOOLS, validate=llm.answer_validator("Answer:"))
    assert r.failed and r.attempts == 3 and len(calls) == 3 and "Answer:" in r.error
    assert r.tool_call is None and r.text == "I think so."


def test_batch_retries_only_the_malformed():
    lm = llm.ScriptedLM(lambda m, a: "Answer: 1" if m[0]["content"] == "ok" or a == 1 else "??", max_retries=1)
    rs = lm.chat_batch([[{"role": "user", "content": "ok"}], [{"role": "user", "content": "bad"}]],
                       validate=llm.answer_validator("Answer:"))
    assert [r.attempts for r in rs] == [1, 2] and not any(r.failed for r in rs) and lm.calls == 3


# ---- backends ---------------------------------------------------------------------------------------------
def test_chat_ids_match_the_server_rendering(book):
    for conv in CONVS:
        assert llm.chat_ids(book.tokenizer, conv) == chat_prompt_ids(book.tokenizer, [ChatMessage(**m) for m in conv])


def test_padded_batch_decode_equals_the_kit_generate(book):
    tok = book.tokenizer
    prompts = [llm.chat_ids(tok, c) for c in CONVS]
    assert len(prompts[0]) != len(prompts[1])
    batch = llm.generate_padded(book.model, prompts, 12, tok.eos_id, tok.pad_id)
    for p, got in zip(prompts, batch):
        ref = book.model.generate(torch.tensor([p]), 12, eos_id=tok.eos_id)[0, len(p):].tolist()
        assert got == (ref[:ref.index(tok.eos_id)] if tok.eos_id in ref else ref)


def test_hf_backend_equals_local_backend(book):
    local = llm.LocalLM(book.model, book.tokenizer, max_new_tokens=12)
    hf = llm.HFLM(str(book_lm_path()), max_new_tokens=12)
    assert [c.text for c in hf.complete(CONVS, None, 0.0, 0)] == [c.text for c in local.complete(CONVS, None, 0.0, 0)]


def test_openai_client_against_the_book_server(book):
    """The official openai client on ``llmcore serve`` (in a thread on localhost): greedy replies equal the
    in-process backend's, and a model that never writes a valid action is retried over HTTP and reported."""
    local = llm.LocalLM(book.model, book.tokenizer, max_new_tokens=12)
    with BackgroundServer(book.model, book.tokenizer) as srv:
        remote = llm.OpenAILM(srv.url, "llmcore-book-lm", max_tokens=12, max_retries=1)
        got = remote.complete(CONVS, None, 0.0, 0)
        assert [c.text for c in got] == [c.text for c in local.complete(CONVS, None, 0.0, 0)]
        assert got[0].prompt_tokens == len(llm.chat_ids(book.tokenizer, CONVS[0]))
        r = remote.chat(CONVS[0], TOOLS, validate=llm.answer_validator("Answer:"))
    assert r.failed and r.attempts == 2 and remote.calls == 2


def test_openai_native_tool_calls():
    """``native_tools=True``: schemas go out as ``tools=``, ``message.tool_calls`` comes back (real client,
    an in-memory HTTP transport playing the server); a malformed native call is retried."""
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        args = '{"key": "zz"}' if len(bodies) > 1 else '{"key": 5}'  # first: wrong type -> retry
        msg = {"role": "assistant", "content": None,
               "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": args}}]}
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                         "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls"}],
                                         "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
    client = openai.OpenAI(base_url="http://test/v1", api_key="x", http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    r = llm.OpenAILM("http://test/v1", "m", native_tools=True, client=client).chat(CONVS[0], TOOLS)
    assert r.tool_call == llm.ToolCall("lookup", {"key": "zz"}, "call_1") and r.attempts == 2
    assert bodies[0]["tools"] == TOOLS and bodies[0]["temperature"] == 0 and bodies[1]["temperature"] > 0
    assert r.prompt_tokens == 10 and r.completion_tokens == 6
