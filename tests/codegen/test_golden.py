"""Golden snapshots of rendered kernels (kernel IR, then what MLX receives), one per schedule
family and dialect. Regenerate with MLXTRITON_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import os
import pathlib

import pytest

from mlxtriton.codegen.kernel_ir import print_kernel
from mlxtriton.codegen.render import lower
from tests import golden as shared
from tests.codegen import codegen_oracle as oracle

GOLDEN = pathlib.Path(__file__).parent / "golden"

CASES = {
    "softmax_f32_32768x4096.metal": (lambda: oracle.softmax(shape=(32768, 4096)), "metal"),
    "softmax_f32_32768x4096.cuda": (lambda: oracle.softmax(shape=(32768, 4096)), "cuda"),
    "rmsnormgate_bf16_8x4096.cuda": (
        lambda: oracle.rms_norm(shape=(8, 4096), dtype="bfloat16", gate=True), "cuda"),
    "layernorm_f32_4x65536_streamed.cuda": (lambda: oracle.layer_norm(shape=(4, 65536)), "cuda"),
    "crossentropy_f16_64x1000.metal": (
        lambda: oracle.cross_entropy(shape=(64, 1000), dtype="float16"), "metal"),
    "logsumexp_f32_100x24_short.metal": (lambda: oracle.logsumexp(shape=(100, 24)), "metal"),
    "colsum_f32_4096x512.cuda": (lambda: oracle.column_sum(shape=(4096, 512)), "cuda"),
    "rmsnormgrad_bf16_64x4096_blocks.cuda": (
        lambda: oracle.rms_norm_grad(shape=(64, 4096), dtype="bfloat16"), "cuda"),
    "rmsnormgrad_f32_64x4096_blocks.metal": (
        lambda: oracle.rms_norm_grad(shape=(64, 4096)), "metal"),
    "pointwise_f16.metal": (lambda: oracle.pointwise_broadcast(dtype="float16"), "metal"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_kernel_matches_golden(name):
    make, target = CASES[name]
    kernel = lower(make(), target)
    text = print_kernel(kernel.kernel) + "\n\n" + kernel.as_text()
    shared.check_golden(os.path.relpath(GOLDEN / f"{name}.txt", shared.GOLDEN), text.rstrip("\n"))
