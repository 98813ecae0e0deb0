r"""One LLM interface for every agent of Part 5: chat messages in, text or an OpenAI-format tool call out.

An agent (ReAct, Plan-and-Execute, Self-Ask, a state graph, a team) talks to a model only through
:class:`ChatLLM`::

    llm = LocalLM(model, tokenizer)                     # the book LM fine-tuned on tool-use traces (toy default)
    llm = OpenAILM("http://127.0.0.1:8000/v1", "llmcore-book-lm")   # any OpenAI-compatible server
    llm = HFLM("path/to/hf/model")                      # a local Hugging Face checkpoint
    reply = llm.chat([{"role": "user", "content": "..."}], tools=[calculator.schema()])
    reply.tool_call     # ToolCall(name="calculator", arguments={"expression": "3 * 4"}) or None
    reply.text          # the final text when the model did not call a tool

**Messages** are OpenAI chat messages (``{"role": "system"|"user"|"assistant"|"tool", "content": str}``);
an assistant message that called a tool carries ``tool_calls`` and the tool's answer comes back as a
``{"role": "tool", "tool_call_id": ..., "content": ...}`` message. **Tools** are described by OpenAI
function-calling JSON schemas (``{"type": "function", "function": {"name", "description", "parameters"}}``).

**Text protocol.** A model without native tool calling (the book LM, most small local models) writes
its call as text, and :func:`parse_reply` reads it back::

    Thought: <free text, optional>
    Action: {"name": "lookup", "arguments": {"key": "quelmo"}}

Anything else is a text reply. A reply is *malformed* when the ``Action:`` JSON does not parse, names
an unknown tool, or misses/mistypes a required argument -- or when a text reply fails the caller's
``validate`` (e.g. ReAct wants ``Answer: ...``). A malformed reply is retried, at most ``max_retries``
times per call, by sampling at ``retry_temperature`` with a seeded generator (a greedy model would
repeat the same mistake); after the budget the :class:`Reply` says ``failed=True`` with the reason. The
interface never raises on model output and never loops without bound:

$$ \text{calls per chat} \le 1 + \texttt{max\_retries}. $$

Backends share the retry logic (:class:`ChatLLM`) and differ only in ``complete`` (messages ->
raw text, batched): :class:`LocalLM` (the kit's ``Llama`` + the book's chat tokens, the same rendering
as ``llmcore serve``), :class:`OpenAILM` (the official ``openai`` client; ``native_tools=True`` sends the
schemas as ``tools=`` and reads ``message.tool_calls``), :class:`HFLM` (``transformers``), and
:class:`ScriptedLM` (replies from a function: deterministic tests).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from llmcore.architecture.generate import SamplerConfig, generate, left_pad
from llmcore.core.errors import LLMCoreError, check_range

Message = dict[str, Any]  #: an OpenAI chat message
ROLES = ("system", "user", "assistant", "tool")
ACTION = "Action:"
_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict,
               "array": list}


# ---- tool calls and schemas ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolCall:
    """One function call: ``name`` and its ``arguments`` (a JSON object)."""

    name: str
    arguments: dict
    id: str = "call_0"

    def to_openai(self) -> dict:
        """OpenAI's ``tool_calls[i]`` form (arguments as a JSON *string*, as the API sends them)."""
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments)}}

    def text(self) -> str:
        """The text protocol's action line."""
        return f"{ACTION} " + json.dumps({"name": self.name, "arguments": self.arguments})


def function_schema(name: str, description: str, **params: tuple[str, str]) -> dict:
    """An OpenAI function-calling schema; ``params`` maps argument name -> ``(json type, description)``,
    all required. ``function_schema("lookup", "...", key=("string", "the key"))``."""
    for p, (typ, _) in params.items():
        if typ not in _JSON_TYPES:
            raise LLMCoreError(f"argument {p!r} of tool {name!r}: type must be one of {sorted(_JSON_TYPES)}, got {typ!r}")
    props = {p: {"type": typ, "description": desc} for p, (typ, desc) in params.items()}
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": list(params)}}}


def _schemas_by_name(tools: Sequence[dict] | None) -> dict[str, dict]:
    return {t["function"]["name"]: t["function"] for t in tools or ()}


def check_call(call: ToolCall, tools: Sequence[dict]) -> str | None:
    """``None`` when ``call`` fits one of the ``tools`` schemas, else the reason (one line)."""
    fns = _schemas_by_name(tools)
    if call.name not in fns:
        return f"unknown tool {call.name!r} (tools: {', '.join(fns)})"
    params = fns[call.name].get("parameters", {})
    props, required = params.get("properties", {}), params.get("required", [])
    if not isinstance(call.arguments, dict):
        return f"arguments of {call.name} must be a JSON object"
    missing = [r for r in required if r not in call.arguments]
    if missing:
        return f"{call.name} misses argument(s) {missing}"
    extra = [a for a in call.arguments if a not in props]
    if extra:
        return f"{call.name} got unknown argument(s) {extra}"
    for a, v in call.arguments.items():
        want = _JSON_TYPES.get(props[a].get("type", "string"), object)
        if not isinstance(v, want) or (isinstance(v, bool) and props[a].get("type") in ("integer", "number")):
            return f"argument {a!r} of {call.name} must be {props[a].get('type')}, got {type(v).__name__}"
    return None


class MalformedOutput(ValueError):
    """Model output that is neither a valid tool call nor an acceptable text reply."""


def parse_reply(text: str, tools: Sequence[dict] | None = None) -> tuple[str, ToolCall | None]:
    """Split model text into ``(thought/text, tool call or None)``; raise :class:`MalformedOutput`.

    A tool call is the first ``Action:`` line's JSON object ``{"name": ..., "arguments": {...}}``
    (``arguments`` may also be a JSON string, as OpenAI sends it); it must fit a schema in ``tools``.
    Text before ``Action:`` is returned as the thought. Without ``Action:`` the whole text is a text reply.
    """
    head, sep, rest = text.partition(ACTION)
    if not sep:
        return text.strip(), None
    if not tools:
        raise MalformedOutput("an Action: line, but no tools were offered")
    body = rest.strip().splitlines()[0].strip() if rest.strip() else ""
    try:
        obj, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as e:
        raise MalformedOutput(f"the Action: line is not JSON ({e.msg} at column {e.colno}): {body[:60]!r}") from None
    if not isinstance(obj, dict) or "name" not in obj or "arguments" not in obj:
        raise MalformedOutput(f'the Action: JSON needs "name" and "arguments": {body[:60]!r}')
    args = obj["arguments"]
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise MalformedOutput(f"arguments is a string that is not JSON: {args[:60]!r}") from None
    call = ToolCall(str(obj["name"]), args)
    problem = check_call(call, tools)
    if problem:
        raise MalformedOutput(problem)
    return head.strip(), call


# ---- messages as text ------------------------------------------------------------------------------------
def message_text(msg: Message) -> str:
    """The text a text-protocol model sees for ``msg``: its content, plus an ``Action:`` line per tool call."""
    if msg.get("role") not in ROLES:
        raise LLMCoreError(f"unknown role {msg.get('role')!r}; valid: {', '.join(ROLES)}")
    parts = [msg["content"]] if msg.get("content") else []
    for tc in msg.get("tool_calls") or ():
        fn = tc["function"]
        args = json.loads(fn["arguments"]) if isinstance(fn["arguments"], str) else fn["arguments"]
        parts.append(ToolCall(fn["name"], args).text())
    return "\n".join(parts)


def chat_ids(tokenizer, messages: Sequence[Message]) -> list[int]:
    """``<bos>`` + ``<|role|>text`` per message + ``<|assistant|>``: the book's chat tokens, exactly as
    ``llmcore serve`` renders a chat request (:func:`llmcore.engineering.inference.server.chat_prompt_ids`;
    a test checks they agree), so a model served over HTTP sees the prompt it was fine-tuned on."""
    ids = [tokenizer.special["<bos>"]]
    for msg in messages:
        text = message_text(msg)  # checks the role
        ids += [tokenizer.special[f"<|{msg['role']}|>"], *tokenizer.encode(text)]
    return ids + [tokenizer.special["<|assistant|>"]]


# ---- replies and the retry loop -----------------------------------------------------------------------------
@dataclass
class Completion:
    """One raw completion of a backend: text and token counts (``None`` when the backend cannot tell)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_call: ToolCall | None = None  # a native tool call (OpenAI ``tool_calls``), bypassing the text protocol


@dataclass
class Reply:
    """What :meth:`ChatLLM.chat` returns: a tool call or a text, and what it cost."""

    text: str  # the thought (with a tool call) or the text reply
    tool_call: ToolCall | None
    raw: str  # the last raw completion
    attempts: int = 1  # completions drawn (1 + retries)
    failed: bool = False  # True: every attempt was malformed; ``error`` says why (the last one)
    error: str = ""
    errors: list[str] = field(default_factory=list)  # the reason of each malformed attempt
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def retries(self) -> int:
        return self.attempts - 1

    def message(self) -> Message:
        """The assistant message to append to the conversation (OpenAI format)."""
        if self.tool_call is not None:
            return {"role": "assistant", "content": self.text or None, "tool_calls": [self.tool_call.to_openai()]}
        return {"role": "assistant", "content": self.text}


Validator = Callable[[str], str | None]  #: text reply -> None if acceptable, else the reason


class ChatLLM:
    """The interface: ``chat`` / ``chat_batch`` with parsing and a bounded retry budget.

    Subclasses implement :meth:`complete` (a batch of conversations -> raw completions) and
    :meth:`count_tokens`. ``max_retries`` extra completions per malformed reply, sampled at
    ``retry_temperature`` (seeded by ``seed``: the same calls give the same replies).
    """

    def __init__(self, max_retries: int = 2, retry_temperature: float = 0.8, seed: int = 0) -> None:
        check_range("max_retries", max_retries, 0, 20)
        check_range("retry_temperature", retry_temperature, 0.0, 5.0)
        self.max_retries, self.retry_temperature, self.seed = max_retries, retry_temperature, seed
        self.calls = 0  # completions drawn so far (the budget is per chat; this is for the reader)

    def complete(self, conversations: Sequence[Sequence[Message]], tools: Sequence[dict] | None,
                 temperature: float, seed: int) -> list[Completion]:
        raise NotImplementedError

    def chat(self, messages: Sequence[Message], tools: Sequence[dict] | None = None,
             validate: Validator | None = None) -> Reply:
        """One reply to ``messages`` (see :meth:`chat_batch`)."""
        return self.chat_batch([messages], tools, validate)[0]

    def chat_batch(self, conversations: Sequence[Sequence[Message]], tools: Sequence[dict] | None = None,
                   validate: Validator | None = None) -> list[Reply]:
        """A reply per conversation. Attempt 0 is greedy; each malformed reply is retried (all still
        malformed ones together, one batch per attempt) until it parses or ``max_retries`` is spent."""
        replies: list[Reply | None] = [None] * len(conversations)
        errors: list[list[str]] = [[] for _ in conversations]
        todo = list(range(len(conversations)))
        for attempt in range(self.max_retries + 1):
            if not todo:
                break
            temp = 0.0 if attempt == 0 else self.retry_temperature
            outs = self.complete([conversations[i] for i in todo], tools, temp, self.seed * 1000 + attempt)
            self.calls += len(todo)
            still = []
            for i, out in zip(todo, outs):
                prev = replies[i]
                pt = out.prompt_tokens + (prev.prompt_tokens if prev else 0)
                ct = out.completion_tokens + (prev.completion_tokens if prev else 0)
                try:
                    if out.tool_call is not None:
                        problem = check_call(out.tool_call, tools or ())
                        if problem:
                            raise MalformedOutput(problem)
                        text, call = out.text, out.tool_call
                    else:
                        text, call = parse_reply(out.text, tools)
                    if call is None and validate is not None:
                        problem = validate(text)
                        if problem:
                            raise MalformedOutput(problem)
                    replies[i] = Reply(text, call, out.text, attempt + 1, False, "", errors[i], pt, ct)
                except MalformedOutput as e:
                    errors[i].append(str(e))
                    replies[i] = Reply(out.text.strip(), None, out.text, attempt + 1, True, str(e), errors[i], pt, ct)
                    still.append(i)
            todo = still
        return replies  # type: ignore[return-value]


# ---- backends --------------------------------------------------------------------------------------------------
def generate_padded(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_id: int, pad_id: int,
                    temperature: float = 0.0, generator: torch.Generator | None = None) -> list[list[int]]:
    """New tokens for each prompt of a batch of *different* lengths: left-padded with ``pad_id`` and decoded by
    the kit's :func:`~llmcore.architecture.generate.generate` with its ``attention_mask`` (each row sees only
    its own tokens at its own RoPE positions; dynamic cache). Agent conversations differ in length at every
    step, and decoding them one by one would cost ~B times more. Greedy unless ``temperature > 0``; the reply
    budget is cut to what fits the model's context. Returns per row the new ids up to (without) ``eos_id``.
    """
    dev = next(model.parameters()).device
    T = max(len(p) for p in prompts)
    max_seq = model.config.max_seq_len
    if T + 1 > max_seq:
        raise LLMCoreError(f"a conversation of {T} tokens does not fit the model's context of {max_seq}")
    idx, mask = left_pad(prompts, pad_id, dev)
    sampler = SamplerConfig(greedy=temperature == 0, temperature=temperature or 1.0)
    new = generate(model, idx, min(max_new_tokens, max_seq - T), sampler, cache="dynamic", generator=generator,
                   eos_id=eos_id, attention_mask=mask).tokens[:, T:].tolist()
    return [row[:row.index(eos_id)] if eos_id in row else row for row in new]


class LocalLM(ChatLLM):
    """A kit ``Llama`` with the book's tokenizer and chat tokens (the agents' toy default, in process).

    Conversations of a batch are decoded together (:func:`generate_padded`); ``max_new_tokens`` bounds
    each reply; ``batch_size`` bounds a forward pass.
    """

    def __init__(self, model, tokenizer, max_new_tokens: int = 64, batch_size: int = 64, **kw) -> None:
        super().__init__(**kw)
        check_range("max_new_tokens", max_new_tokens, 1)
        self.model, self.tokenizer, self.max_new_tokens, self.batch_size = model, tokenizer, max_new_tokens, batch_size

    def complete(self, conversations, tools, temperature, seed):
        gen = torch.Generator().manual_seed(seed)
        ids = [chat_ids(self.tokenizer, c) for c in conversations]
        limit = self.model.config.max_seq_len - 1
        fits = [i for i, p in enumerate(ids) if len(p) <= limit]
        # a conversation past the context gets an empty completion: malformed, so the episode ends reported
        out: list[Completion] = [Completion("", len(p), 0) for p in ids]
        for s in range(0, len(fits), self.batch_size):
            chunk = [ids[i] for i in fits[s:s + self.batch_size]]
            new = generate_padded(self.model, chunk, self.max_new_tokens, self.tokenizer.eos_id,
                                  self.tokenizer.pad_id, temperature, gen)
            for i, p, n in zip(fits[s:s + self.batch_size], chunk, new):
                out[i] = Completion(self.tokenizer.decode(n), len(p), len(n) + 1)
        return out


class OpenAILM(ChatLLM):
    """Any OpenAI-compatible endpoint through the official ``openai`` client (vLLM, Ollama, an API, or the
    book's own ``llmcore serve``).

    ``native_tools=False`` (for servers of plain text models, like the book's): tool calls travel in the
    text protocol, messages are sent as text (:func:`message_text`). ``native_tools=True``: the schemas
    go as ``tools=``, the messages in OpenAI's own form, and ``message.tool_calls`` is read back.
    """

    def __init__(self, base_url: str, model: str, api_key: str = "none", native_tools: bool = False,
                 max_tokens: int = 64, timeout: float = 60.0, client=None, **kw) -> None:
        super().__init__(**kw)
        import openai  # optional dependency (the serve/agents extras)

        self.client = client or openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
        self.model, self.native_tools, self.max_tokens = model, native_tools, max_tokens

    def complete(self, conversations, tools, temperature, seed):
        out = []
        for conv in conversations:
            kw: dict = {}
            if self.native_tools and tools:
                msgs, kw["tools"] = [dict(m) for m in conv], list(tools)
            else:
                msgs = [{"role": m["role"], "content": message_text(m)} for m in conv]
            r = self.client.chat.completions.create(model=self.model, messages=msgs, max_tokens=self.max_tokens,
                                                    temperature=temperature, seed=seed, **kw)
            msg = r.choices[0].message
            call = None
            if msg.tool_calls:
                fn = msg.tool_calls[0].function
                try:
                    call = ToolCall(fn.name, json.loads(fn.arguments or "{}"), msg.tool_calls[0].id)
                except json.JSONDecodeError:
                    call = ToolCall(fn.name, {"__unparsed__": fn.arguments})  # fails check_call: retried
            usage = r.usage
            out.append(Completion(msg.content or "", usage.prompt_tokens if usage else 0,
                                  usage.completion_tokens if usage else 0, call))
        return out


class HFLM(ChatLLM):
    """A local Hugging Face causal LM (``transformers``), e.g. a path from ``save_pretrained``.

    Prompts use the tokenizer's ``chat_template`` when it has one, else the book's chat tokens
    (:func:`chat_ids`, for the book LM's own HF export). Decoded one conversation at a time.
    """

    def __init__(self, path: str, max_new_tokens: int = 64, device: str = "cpu", **kw) -> None:
        super().__init__(**kw)
        from transformers import AutoModelForCausalLM, AutoTokenizer  # optional dependency (the hf extra)

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
        self.max_new_tokens, self.device = max_new_tokens, device

    def prompt_ids(self, conv: Sequence[Message]) -> list[int]:
        msgs = [{"role": m["role"], "content": message_text(m)} for m in conv]
        if getattr(self.tok, "chat_template", None):
            return list(self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
        special = {t: self.tok.convert_tokens_to_ids(t) for t in ("<bos>", "<|assistant|>")}
        ids = [special["<bos>"]]
        for m in msgs:
            ids += [self.tok.convert_tokens_to_ids(f"<|{m['role']}|>")]
            ids += self.tok(m["content"], add_special_tokens=False)["input_ids"]
        return ids + [special["<|assistant|>"]]

    @torch.no_grad()
    def complete(self, conversations, tools, temperature, seed):
        out = []
        for conv in conversations:
            ids = torch.tensor([self.prompt_ids(conv)], device=self.device)
            kw = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            if temperature > 0:
                torch.manual_seed(seed)
            seq = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
                                      eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.pad_token_id, **kw)
            new = seq[0, ids.shape[1]:].tolist()
            if self.tok.eos_token_id in new:
                new = new[:new.index(self.tok.eos_token_id)]
            out.append(Completion(self.tok.decode(new, skip_special_tokens=True), ids.shape[1], len(new)))
        return out


class ScriptedLM(ChatLLM):
    """Replies from ``script(messages, attempt) -> text``: a deterministic backend for tests and for
    showing the retry budget with hand-made malformed output."""

    def __init__(self, script: Callable[[Sequence[Message], int], str], **kw) -> None:
        super().__init__(**kw)
        self.script = script

    def complete(self, conversations, tools, temperature, seed):
        attempt = seed % 1000
        return [Completion(self.script(c, attempt), 0, 0) for c in conversations]


def answer_validator(prefix: str) -> Validator:
    """A text reply must contain ``prefix`` followed by something (ReAct's ``Answer:`` ...)."""
    pat = re.compile(re.escape(prefix) + r"\s*\S")

    def validate(text: str) -> str | None:
        return None if pat.search(text) else f"expected a tool call or {prefix!r} <answer>, got {text[:60]!r}"
    return validate
