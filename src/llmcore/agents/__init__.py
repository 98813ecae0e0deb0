"""Part 5: agents — retrieval, the LLM interface, orchestration, state graphs and multi-agent systems."""
