"""Differential fuzzing of the public API against plain MLX, the reference (tests/fuzz).

Every program runs through `optimize` for each chip, the same with the generated kernels in the
NumPy interpreter, ``@kernel`` (interpreted) and the JAX oracle, called twice with new values,
and must agree with plain MLX: raise where it raises, else the same shapes, dtypes and values;
and its gradient, taken inside and outside `optimize`, must agree with plain MLX's.
Random programs (hypothesis), then the corners each op must survive whatever hypothesis draws:
NaN / +-inf / -0.0, 0-d, size-0 and size-1 axes, a row of 4097, float16 / bfloat16 / int32 /
bool, transposed / strided / reversed / broadcast arguments; static Python scalars whose type
changes between calls; 8 threads calling one function while its cache evicts.

The long profile: ``python -m tests.fuzz --programs 3000`` (grouped classes and reductions), or
``MLXTRITON_HYPOTHESIS_PROFILE=long`` for more hypothesis examples here.
"""

from __future__ import annotations

import threading

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given

import mlxtriton
from tests.fuzz import corners, differential
from tests.fuzz.programs import Program, fuzz_programs


# The corners run through every path but the oracle, which compiles each primitive once per shape
# and dtype (about 30 ms each): it sees each family's cases as one program
# (test_the_oracle_at_the_corners), and the gradient paths, whose tolerances are not made for
# their special values and half-precision casts. The random programs run through every path.
KERNEL_PATHS = tuple(p for p in differential.PATHS if p.api != "oracle" and not p.gradient)
ORACLE = (differential.Path("oracle"),)


def check(program: Program, paths=KERNEL_PATHS) -> None:
    findings = differential.run(program, paths)
    if findings:
        pytest.fail("\n".join([f"{len(findings)} disagreement(s) with plain MLX:", *map(str, findings),
                               "", differential.reproduction(program, findings[0])]), pytrace=False)


@given(fuzz_programs())
def test_random_programs_agree_with_mlx(case):
    check(case, differential.PATHS)


@pytest.mark.parametrize("name", sorted(corners.CASES))
def test_corner(name):
    case = corners.CASES[name]
    program = case.build()
    _, _, want = differential.reference(program)
    assert [w.error is not None for w in want] == [case.raises] * 2, [w.error for w in want]
    check(program)


@pytest.mark.parametrize("family", corners.FAMILIES)
def test_the_oracle_at_the_corners(family):
    # a third of the reductions: each (op, shape, dtype, axes) costs the oracle a compilation
    program = corners.merged(family, every=3 if family == "reductions" else 1)
    _, _, want = differential.reference(program)
    assert all(w.error is None for w in want), [w.error for w in want]
    check(program, ORACLE)


# ---- threads -----------------------------------------------------------------------------------------

def _stress(fn, shapes, interpret: bool):
    """8 threads call one optimized function, first all with one new shape at once, then cycling
    through more shapes than its cache holds; returns (results that differ, exceptions, traces)."""
    rng = np.random.default_rng(0)
    inputs = {s: mx.array(rng.standard_normal(s).astype(np.float32)) for s in shapes}
    expected = {s: np.array(fn(x)) for s, x in inputs.items()}
    traces = [0]

    def traced(x):
        traces[0] += 1
        return fn(x)

    with differential.interpreting(interpret):
        f = mlxtriton.Compiled(traced, mlxtriton.optimize(fn).passes, chip="m3", cache_size=2)
        wrong, errors = [], []
        barrier = threading.Barrier(8)

        def work(k):
            try:
                barrier.wait()
                for i in range(40):
                    s = shapes[0] if i == 0 else shapes[(k + i) % len(shapes)]
                    got = np.array(f(inputs[s]))
                    if not np.allclose(got, expected[s], rtol=1e-5, atol=1e-6):
                        wrong.append((k, s))
            except Exception as err:  # noqa: BLE001 (any exception is a failure to report)
                errors.append(f"{type(err).__name__}: {err}")

        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return wrong, errors, traces[0]


@pytest.mark.filterwarnings("ignore::mlxtriton.RebuildWarning")  # rebuilding is the point here
@pytest.mark.parametrize("interpret", [False, True])
def test_threads_calling_one_function_while_its_cache_evicts(interpret):
    fn = lambda x: mx.softmax(x * 2.0, axis=-1) + mx.sum(x, axis=0, keepdims=True)  # noqa: E731
    shapes = [(8, 64), (4, 16), (5, 33), (6, 8), (3, 129)]
    for _ in range(2):  # a race shows in some runs only
        wrong, errors, _ = _stress(fn, shapes, interpret)
        assert not errors, errors[:3]
        assert not wrong, wrong[:5]


def test_threads_with_one_new_shape_build_it_once():
    fn = lambda x: mx.softmax(x * 2.0, axis=-1)  # noqa: E731
    traces = [0]

    def counted(x):
        traces[0] += 1
        return fn(x)

    one = mlxtriton.Compiled(counted, mlxtriton.optimize(fn).passes, chip="m3")
    one(mx.ones((8, 64)))
    per_build = traces[0]
    wrong, errors, traced = _stress(fn, [(8, 64)], interpret=False)
    assert not errors and not wrong, (errors[:3], wrong[:3])
    assert traced == per_build


def test_the_harness_is_told_each_path_before_it_runs():
    """What places a hang: plain MLX first, then every path in order (the long profile's
    worker reports each, and a hang in plain MLX is a class of its own, not mlxtriton's)."""
    program = corners.CASES[next(iter(corners.CASES))].build()
    seen = []
    differential.run(program, KERNEL_PATHS[:2], seen.append)
    assert seen == [differential.PLAIN_MLX, *map(str, KERNEL_PATHS[:2])]
