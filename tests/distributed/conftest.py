"""Runs the multi-process programs once per world size (a session fixture each); each test then
checks that its case passed on every rank. A rank that fails, or ranks that run past their time,
fail every test of that world size with the failing rank's own message."""

import pytest

from tests.distributed.launch import launch

CASES = {
    2: ("collectives", "send_recv", "sum_scatter", "fusion_around_all_sum", "gradients",
        "sharded_llama", "sharded_qwen3", "sharded_generation", "data_parallel_step"),
    4: ("collectives", "send_recv", "sharded_llama"),
}
TIMEOUT = 240  # seconds for one world size's programs; they take 10-40 s on CI's two cores


def _passed(ranks: int) -> list[set[str]]:
    outputs = launch(["-m", "tests.distributed.worker", *CASES[ranks]], ranks, timeout=TIMEOUT)
    return [{line.removeprefix("ok ") for line in out.splitlines() if line.startswith("ok ")}
            for out in outputs]


@pytest.fixture(scope="session")
def ranks_2() -> list[set[str]]:
    return _passed(2)


@pytest.fixture(scope="session")
def ranks_4() -> list[set[str]]:
    return _passed(4)


@pytest.fixture
def passed(request):
    """``passed(case, ranks)``: assert that ``case`` passed on every one of ``ranks`` processes."""

    def check(case: str, ranks: int) -> None:
        assert case in CASES[ranks], f"{case} is not run on {ranks} ranks"
        results = request.getfixturevalue(f"ranks_{ranks}")
        missing = [rank for rank, done in enumerate(results) if case not in done]
        assert not missing, f"{case} did not pass on ranks {missing}"

    return check
