"""Collectives as graph equations, checked on 2 and 4 processes of MLX's ring backend: traced,
printed with their group, verified, evaluated and optimized as MLX runs them; regions end before a
collective and the work after it fuses; gradients through them are MLX's (tests/distributed/worker.py
holds each case's checks)."""

import pytest


@pytest.mark.parametrize("ranks", [2, 4])
def test_all_reduce_and_all_gather(passed, ranks):
    passed("collectives", ranks)


@pytest.mark.parametrize("ranks", [2, 4])
def test_send_and_recv(passed, ranks):
    passed("send_recv", ranks)


def test_sum_scatter_runs_or_fails_as_mlx_does(passed):
    passed("sum_scatter", 2)


def test_residual_add_and_norm_after_all_sum_are_one_region(passed):
    passed("fusion_around_all_sum", 2)


def test_gradients_through_collectives(passed):
    passed("gradients", 2)
