"""benchmarks/decode_kernels.py: the static model of what MLX's CUDA backend launches counts views
as free, SDPA's fallback op by op, and the decode rules' launches saved on a decode step (the CPU
dry run the GPU run extends)."""

import importlib.util
import pathlib

from mlxtriton.graph import GraphBuilder

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "decode_kernels.py"
_spec = importlib.util.spec_from_file_location("decode_kernels_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _sdpa(mask: bool, lq: int = 1, dtype: str = "bfloat16"):
    b = GraphBuilder()
    q = b.input((1, 8, lq, 64), dtype)
    k, v = b.input((1, 2, 256, 64), dtype), b.input((1, 2, 256, 64), dtype)
    extra = []
    if mask:
        (m,) = b.add("Broadcast", [b.input((lq, 256), "bool")], shape=(1, 8, lq, 256))
        extra = [m]
    (y,) = b.add("ScaledDotProductAttention", [q, k, v, *extra], scale=0.125, do_causal=False,
                 has_sinks=False, output_logsumexp=False, force_fused=False)
    return b.build([y])


def test_sdpa_is_one_launch_where_mlx_has_a_kernel_and_its_fallback_op_by_op_elsewhere():
    assert bench.cuda_launches(_sdpa(mask=False)) == {"sdpa": 1}  # sdpa_vector
    assert bench.cuda_launches(_sdpa(mask=True, lq=2)) == {"sdpa": 1}  # cuDNN with a mask
    # decode with an array mask: q * scale, q @ k^T (gemv), where, softmax, @ v (pointer array + GEMM)
    assert bench.cuda_launches(_sdpa(mask=True)) == {"sdpa fallback": 6}


def test_views_are_free_and_a_strided_reshape_copies():
    b = GraphBuilder()
    x = b.input((4, 8), "float32")
    (t,) = b.add("Transpose", [x], axes=(1, 0))
    (r,) = b.add("Reshape", [t], shape=(32,))  # a transposed array reshaped: MLX copies it
    (e,) = b.add("ExpandDims", [x], axes=(0,))
    (y,) = b.add("Exp", [r])
    assert bench.cuda_launches(b.build([y, e])) == {"copy": 1, "mlx op": 1}


def test_the_grouped_attention_rule_saves_launches_on_a_tiny_llama_decode_step():
    estimates = bench.estimate("tiny")
    with_rule, without = sum(estimates["optimize"].values()), sum(estimates["optimize-grouped"].values())
    assert "sdpa fallback" in estimates["optimize-grouped"] and "sdpa fallback" not in estimates["optimize"]
    assert without - with_rule == 2 * 3  # two layers, three launches each


def test_a_norm_of_a_residual_add_saves_launches_where_post_norms_leave_one():
    import mlx.core as mx

    from tests import lm_zoo

    # olmo2 normalises each block's output before its residual add, so the next norm reads the
    # add: a GPU trace's fast op there shares the add's kernel (llama's add is a GEMM epilogue).
    estimates = bench.estimate(rules=("norm-input",), model=lm_zoo.build("olmo2", mx.bfloat16))
    with_rule, without = estimates["optimize"], estimates["optimize-norm-input"]
    assert sum(with_rule.values()) < sum(without.values())
    assert with_rule["fast op"] < without["fast op"]
