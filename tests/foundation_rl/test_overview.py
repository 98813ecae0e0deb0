"""The overview chapter's taxonomy, learning path and random-vs-trained closed loop."""

from llmcore.core.registry import ALGORITHMS, MODULES
from llmcore.foundation_rl import overview as O


def test_learning_path_is_acyclic_and_respects_prerequisites():
    depth = O.learning_path()
    assert set(depth) == {m.name for m in MODULES}
    for m in MODULES:
        for p in m.prerequisites:
            assert depth[p] < depth[m.name]


def test_taxonomy_rows_cover_every_algorithm():
    rows = O.taxonomy_rows()
    assert len(rows) == len(ALGORITHMS)
    assert {r["family"] for r in rows} <= set(O.FAMILIES)
    assert {r["data"] for r in rows} <= set(O.REGIMES)


def test_trained_agent_beats_random_and_stays_below_optimum():
    res = O.random_vs_trained(toy=True, seed=1, show_progress=False)
    assert res.trained_returns.mean() > res.random_returns.mean() + 0.5
    assert res.trained_returns.mean() < res.optimal_success + 0.05
    assert O.make_report(res, True, "cpu", 1).passed
    assert 0 < res.random_exact < 0.05  # the uniform policy rarely crosses the slippery lake
