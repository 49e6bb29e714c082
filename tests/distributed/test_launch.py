"""The multi-process launcher the distributed tests rely on: every rank's output comes back, a
failing rank fails the launch with its own message, and ranks past their time are stopped."""

import time

import pytest

from tests.distributed.launch import LaunchError, launch

RANK = "import mlx.core as mx; g = mx.distributed.init(strict=True, backend='ring'); r = g.rank()"


def test_every_rank_runs_in_one_group():
    program = f"{RANK}; print(r, g.size(), mx.distributed.all_sum(mx.array(r + 1), group=g).item())"
    assert launch(["-c", program], 2, timeout=60) == ["0 2 3\n", "1 2 3\n"]


def test_a_failing_rank_fails_with_its_message():
    program = f"{RANK}\nif r == 1: raise ValueError('rank one says no')\nmx.eval(mx.distributed.all_sum(mx.ones(2)))"
    start = time.monotonic()
    with pytest.raises(LaunchError, match="(?s)rank 1 exited with status 1.*ValueError: rank one says no"):
        launch(["-c", program], 2, timeout=60)
    assert time.monotonic() - start < 30  # rank 0, blocked in its all_sum, is stopped


def test_ranks_past_their_time_are_stopped():
    with pytest.raises(LaunchError, match=r"ranks \[0, 1\] still running after 2 s"):
        launch(["-c", "import time; time.sleep(60)"], 2, timeout=2)
