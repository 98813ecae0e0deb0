"""Shared fixtures of the offline-RL tests."""

import numpy as np
import pytest

from llmcore.offline_rl import offline_rl as O


@pytest.fixture
def hand_data() -> O.Dataset:
    """3 states, 2 actions: (0, a0) -> 1 twice; (1, a1) -> 2 terminates; (1, a0) -> 0 with reward -2."""
    obs = np.array([0, 0, 1, 1])
    act = np.array([0, 0, 1, 0])
    rew = np.array([-1.0, -1.0, -1.0, -2.0])
    nxt = np.array([1, 1, 2, 0])
    term = np.array([False, False, True, False])
    return O.Dataset("hand", obs, act, rew, nxt, term, np.zeros(4, bool), np.full((4, 2), 0.5), np.array([-3.0]))


