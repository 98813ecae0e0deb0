r"""The book's tools as a real MCP server (stdio, a child process) and the client side the agents use.

Server (``python -m llmcore.agents.multi_agent``, built on the ``mcp`` SDK's ``MCPServer``): ``search`` (BM25
over the RAG chapter's corpus, the top chunk), ``rate_live`` (a *deliberately failing* exchange-rate API),
``rate_table`` (its fallback), ``calculator``, ``send_email`` (a side effect that needs a human's approval),
and two tools for the experimenter, not the agents: ``outbox`` (what was really sent) and ``reset``.

``rate_live`` fails in the two ways real APIs do: the first call for every currency pair answers
``503 service unavailable`` (a transient error: a retry works) and any pair quoted in ``JPY`` never answers
(the client's timeout fires: only a fallback route helps). ``search`` and ``rate_*`` wait ``latency_s`` before
they answer (``asyncio.sleep``: a stand-in for a network round trip, so that parallel callers overlap).

Client: :func:`mcp_client` starts the server and yields an initialised ``ClientSession``; :class:`ToolBox`
lists the server's tools, turns their MCP input schemas into the OpenAI function schemas the LLM interface
takes (:func:`openai_schema`), and calls them with a timeout, returning ``(ok, text)`` — a tool error or a
timeout becomes an ``ERROR: ...`` observation for the agent, never an exception.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import operator
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from llmcore.agents.rag.corpus import chunk_corpus, load_docs
from llmcore.agents.rag.experiment import TOY_TOPICS
from llmcore.agents.rag.retrieval import BM25, tokenize
from llmcore.core.errors import LLMCoreError

#: the fallback's table (the live API returns the same numbers when it answers)
RATES = {("EUR", "USD"): 1.08, ("USD", "JPY"): 150.0, ("GBP", "EUR"): 1.17, ("USD", "EUR"): 0.93,
         ("EUR", "JPY"): 162.0, ("GBP", "USD"): 1.27}
HANGS = "JPY"  #: rate_live never answers for a pair quoted in this currency
AGENT_TOOLS = ("search", "rate_live", "rate_table", "calculator", "send_email")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.USub: operator.neg}


def calculate(expression: str) -> float:
    """Evaluate ``+ - * /`` and parentheses over numbers (an AST walk, never ``eval``)."""
    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"not arithmetic: {ast.unparse(node)!r}")
    try:
        return round(ev(ast.parse(expression, mode="eval").body), 6)
    except SyntaxError:
        raise ValueError(f"not arithmetic: {expression!r}") from None


def _tool_error(text: str) -> Exception:
    """The SDK's ``ToolError`` (an expected failure the server reports without a traceback) when it is installed."""
    try:
        from mcp.server.mcpserver.exceptions import ToolError  # optional dependency (the agents extra)
    except ImportError:
        return RuntimeError(text)
    return ToolError(text)


@dataclass
class ToolWorld:
    """The server's state: the corpus index, the live API's call counts and the outbox (plain Python, so a
    test can call the same tools in process)."""

    latency_s: float = 0.05
    topics: tuple[str, ...] = TOY_TOPICS
    max_chars: int = 400
    live_calls: Counter = field(default_factory=Counter)
    sent: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.chunks = chunk_corpus(load_docs(self.topics), "structure", self.max_chars)
        self.bm25 = BM25([tokenize(c.text) for c in self.chunks])

    async def search(self, query: str) -> str:
        """Search the Python language reference (BM25); returns the best-matching passage."""
        await asyncio.sleep(self.latency_s)
        return self.passage(query)

    def passage(self, query: str) -> str:
        """The top BM25 chunk for ``query`` (``search`` without the latency)."""
        return self.chunks[int(self.bm25.scores(tokenize(query)).argmax())].text

    async def rate_live(self, base: str, quote: str) -> float:
        """Live exchange rate: units of ``quote`` per unit of ``base`` (ISO codes, e.g. EUR, USD)."""
        pair = (base.upper(), quote.upper())
        self.live_calls[pair] += 1
        await asyncio.sleep(self.latency_s)
        if pair not in RATES:
            raise _tool_error(f"unknown currency pair {base}/{quote}")
        if pair[1] == HANGS:
            await asyncio.sleep(3600)  # the upstream never answers: only the caller's timeout ends this
        if self.live_calls[pair] == 1:
            raise _tool_error("503 service unavailable, try again")
        return RATES[pair]

    async def rate_table(self, base: str, quote: str) -> float:
        """Yesterday's exchange-rate table (the fallback when the live API fails)."""
        await asyncio.sleep(self.latency_s)
        pair = (base.upper(), quote.upper())
        if pair not in RATES:
            raise _tool_error(f"unknown currency pair {base}/{quote}")
        return RATES[pair]

    def calculator(self, expression: str) -> float:
        """Evaluate an arithmetic expression (numbers, + - * / and parentheses)."""
        return calculate(expression)

    def send_email(self, to: str, body: str) -> str:
        """Send an email (a side effect: needs a human's approval)."""
        self.sent.append(f"to {to}: {body}")
        return f"sent to {to}"

    def outbox(self) -> list[str]:
        """(experimenter) Every email really sent since the last reset."""
        return list(self.sent)

    def reset(self) -> int:
        """(experimenter) Forget the outbox and the live API's call counts; returns the emails dropped."""
        n = len(self.sent)
        self.sent.clear()
        self.live_calls.clear()
        return n

    def tools(self) -> dict[str, Callable]:
        return {n: getattr(self, n) for n in (*AGENT_TOOLS, "outbox", "reset")}


def serve_mcp(argv: list[str] | None = None) -> None:
    """Run the book's tools as an MCP server on stdin/stdout (``python -m llmcore.agents.multi_agent``)."""
    from mcp.server.mcpserver import MCPServer  # optional dependency (the agents extra)

    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.05)
    args = ap.parse_args(argv)
    world = ToolWorld(latency_s=args.latency)
    server = MCPServer("llmcore-book-tools", log_level="CRITICAL")
    for fn in world.tools().values():
        server.tool()(fn)
    server.run("stdio")


@asynccontextmanager
async def mcp_client(latency_s: float = 0.05, python: str = sys.executable):
    """Start the book's MCP server as a child process and yield an initialised ``ClientSession`` over stdio."""
    from mcp.client.session import ClientSession  # optional dependency (the agents extra)
    from mcp.client.stdio import StdioServerParameters, stdio_client

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    params = StdioServerParameters(command=python, args=["-m", "llmcore.agents.multi_agent", "--latency",
                                                         str(latency_s)], env=env)
    try:  # the server's stderr goes to ours, unless ours is not a real file (a Jupyter kernel's stream)
        sys.stderr.fileno()
        errlog, sink = sys.stderr, None
    except (AttributeError, OSError):
        errlog = sink = open(os.devnull, "w")  # noqa: SIM115 (closed below)
    try:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session
    finally:
        if sink is not None:
            sink.close()


async def mcp_call(session: Any, name: str, arguments: dict[str, Any]) -> Any:
    """Call a tool on an MCP session and return its structured result (or its text); an error is one line."""
    res = await session.call_tool(name, arguments)
    if res.is_error:
        raise LLMCoreError(f"MCP tool {name!r} failed: {res.content[0].text if res.content else '?'}")
    if res.structured_content is not None and "result" in res.structured_content:
        return res.structured_content["result"]
    return res.content[0].text


def openai_schema(tool: Any) -> dict:
    """An MCP ``Tool`` (name, description, JSON-Schema ``input_schema``) as an OpenAI function schema."""
    params = tool.input_schema
    props = {k: {"type": v.get("type", "string"), "description": v.get("title", k)}
             for k, v in params.get("properties", {}).items()}
    return {"type": "function", "function": {"name": tool.name, "description": tool.description or tool.name,
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": list(params.get("required", []))}}}


@dataclass
class ToolBox:
    """An agent's view of the MCP server: the tools it may use, called with a timeout.

    ``schemas`` are OpenAI function schemas built from the server's ``tools/list`` answer; ``call`` returns
    ``(ok, text)`` and counts every call that went over the wire in ``calls``.
    """

    session: Any
    timeout_s: float
    schemas: list[dict] = field(default_factory=list)
    calls: list[tuple[str, dict, bool, float]] = field(default_factory=list)  # (tool, args, ok, seconds)

    async def load(self, allowed: tuple[str, ...] = AGENT_TOOLS) -> ToolBox:
        listed = await self.session.list_tools()
        self.schemas = [openai_schema(t) for t in listed.tools if t.name in allowed]
        return self

    def only(self, names: tuple[str, ...]) -> list[dict]:
        """The schemas of ``names`` (an agent's role decides which tools it is offered)."""
        return [s for s in self.schemas if s["function"]["name"] in names]

    async def call(self, name: str, arguments: dict[str, Any]) -> tuple[bool, str]:
        t = time.perf_counter()
        try:
            out = await asyncio.wait_for(mcp_call(self.session, name, arguments), self.timeout_s)
            ok, text = True, str(out)
        except asyncio.TimeoutError:
            ok, text = False, f"ERROR: timeout: {name} did not answer in {self.timeout_s:g} s"
        except LLMCoreError as exc:
            ok, text = False, "ERROR: " + str(exc).split(": ", 1)[-1]
        self.calls.append((name, dict(arguments), ok, time.perf_counter() - t))
        return ok, text
