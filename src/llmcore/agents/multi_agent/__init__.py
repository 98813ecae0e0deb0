"""Multi-Agent Systems: a validated message protocol, the book's tools over MCP, a human approval gate, and
agents behind the one LLM interface — a single agent, a supervisor team and a decentralised mesh.

* :mod:`.protocol` — :class:`AgentMessage` (pydantic schema), :class:`Bus` (loop and timeout detection,
  per-agent accounting);
* :mod:`.tools` — the MCP stdio server (:func:`serve_mcp`), :func:`mcp_client`, :class:`ToolBox`;
* :mod:`.hitl` — :class:`ApprovalGate` (the state-graph chapter's ``interrupt`` + SQLite), :class:`ScriptedHuman`;
* :mod:`.agents` — :class:`PolicyLM`, :func:`fit_context`, the policies, :func:`run_agent`, :func:`single_agent`,
  :func:`team`;
* :mod:`.closed_loop` — :class:`MultiAgentConfig`, :func:`experiment`, :func:`make_report`, :func:`run`;
* :mod:`.plots` — the topology diagram, the message trace and the comparison.
"""

from llmcore.agents.multi_agent.agents import (
    Outcome,
    PolicyLM,
    Runtime,
    TeamSpec,
    book_policy,
    coordinator_policy,
    fit_context,
    looping,
    prompt_tokens,
    read_answer,
    run_agent,
    single_agent,
    team,
)
from llmcore.agents.multi_agent.closed_loop import (
    MultiAgentConfig,
    MultiAgentResult,
    experiment,
    make_report,
    run,
)
from llmcore.agents.multi_agent.hitl import ApprovalGate, ScriptedHuman, gate_graph
from llmcore.agents.multi_agent.plots import plot_comparison, plot_topologies, plot_trace
from llmcore.agents.multi_agent.protocol import (
    AgentMessage,
    AgentStats,
    Bus,
    LoopDetected,
    describe,
    validate_message,
)
from llmcore.agents.multi_agent.tools import (
    ToolBox,
    ToolWorld,
    calculate,
    mcp_call,
    mcp_client,
    openai_schema,
    serve_mcp,
)

__all__ = [
    "AgentMessage", "AgentStats", "ApprovalGate", "Bus", "LoopDetected", "MultiAgentConfig", "MultiAgentResult",
    "Outcome", "PolicyLM", "Runtime", "ScriptedHuman", "TeamSpec", "ToolBox", "ToolWorld", "book_policy", "calculate",
    "coordinator_policy", "describe", "experiment", "fit_context", "gate_graph", "looping", "make_report", "mcp_call",
    "mcp_client", "openai_schema", "plot_comparison", "plot_topologies", "plot_trace", "prompt_tokens",
    "read_answer", "run", "run_agent", "serve_mcp", "single_agent", "team", "validate_message",
]
