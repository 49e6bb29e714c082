"""Real distributed programs through `optimize`: mlx-lm models sharded with ``model.shard(group)``
give the unsharded model's logits (prefill) on every rank, and a data-parallel training step with
``nn.average_gradients`` gives the plain step's weights (tests/distributed/worker.py)."""

import pytest


@pytest.mark.parametrize("ranks", [2, 4])
def test_sharded_llama_prefill(passed, ranks):
    passed("sharded_llama", ranks)


def test_sharded_qwen3_prefill(passed):
    passed("sharded_qwen3", 2)


def test_data_parallel_training_step(passed):
    passed("data_parallel_step", 2)


def test_sharded_generation_through_optimize(passed):
    passed("sharded_generation", 2)
