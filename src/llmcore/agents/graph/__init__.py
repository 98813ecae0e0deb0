"""Mesh & State Machine: an asynchronous state-graph engine (typed state, reducers, conditional edges,
fan-out/fan-in, cycles with a step limit, SQLite checkpoints, crash resume, ``interrupt`` for a human),
the same graphs rebuilt in LangGraph as the oracle, the chapter's workloads and its closed loop.

* :mod:`.engine` — :class:`StateGraph`, :class:`CompiledGraph`, :func:`apply_updates`, :func:`interrupt`;
* :mod:`.checkpoint` — :class:`SQLiteCheckpointer`;
* :mod:`.bridge` — :func:`to_langgraph`, :func:`run_langgraph`;
* :mod:`.workflows` — the research, fan-out, approval and no-exit graphs (deterministic nodes);
* :mod:`.closed_loop` — :class:`MeshConfig`, :func:`experiment`, :func:`make_report`, :func:`run`;
* :mod:`.plots` — the graph diagram and the fan-out timeline.
"""

from llmcore.agents.graph.bridge import run_langgraph, to_langgraph
from llmcore.agents.graph.checkpoint import SQLiteCheckpointer
from llmcore.agents.graph.closed_loop import MeshConfig, MeshResult, experiment, make_report, run
from llmcore.agents.graph.engine import (
    END,
    START,
    Command,
    CompiledGraph,
    GraphError,
    Interrupt,
    RunResult,
    StateGraph,
    StepLimitError,
    apply_updates,
    channels_of,
    interrupt,
)
from llmcore.agents.graph.plots import plot_graph, plot_timeline

__all__ = [
    "END", "START", "Command", "CompiledGraph", "GraphError", "Interrupt", "MeshConfig", "MeshResult", "RunResult",
    "SQLiteCheckpointer", "StateGraph", "StepLimitError", "apply_updates", "channels_of", "experiment",
    "interrupt", "make_report", "plot_graph", "plot_timeline", "run", "run_langgraph", "to_langgraph",
]
