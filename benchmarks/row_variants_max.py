"""Benchmark (CUDA): per-call cost of a tiny fused call, and cross-entropy row kernels with a
one-instruction NaN-propagating max (PTX max.NaN.f32) in place of mt_max's compare-and-select.

Run on the H200 from the repository root: OUT=dir python benchmarks/row_variants_max.py TAG
(TAG names the runtime under test; "wip" also times the max variants). Kernels and timing come
from benchmarks/row_variants.py. Results: benchmarks/results/row_variants_max_h200.json.
"""
import json, os, sys, timeit
tag = sys.argv[1] if len(sys.argv) > 1 else "wip"
sys.path.insert(0, os.getcwd())
import mlx.core as mx
src = open("benchmarks/row_variants.py").read().split("def main")[0]
exec(src)
OUT = os.environ.get("OUT", "/tmp")
import mlxtriton
from mlxtriton.runtime import launch as L
small = mx.random.normal((8, 64)); mx.eval(small)
opt = mlxtriton.optimize(lambda x: mx.softmax(x, axis=-1)); mx.eval(opt(small))
low = opt.trace(small).lower("cuda")[0]
kobj = L._kernel_object(low)
call = low.call_kwargs(); call["output_dtypes"] = [mx.float32]
run = L.launcher(low)
pc = {}
for nm, fn in {"mx.softmax": lambda x: mx.softmax(x, axis=-1), "x*2": lambda x: x * 2,
               "mlxtriton": opt, "launcher_run": lambda x: run(x)[0],
               "raw_obj_call": lambda x: kobj(inputs=[x], **call)[0]}.items():
    pc[nm] = 1e6 * time_mlx(fn, (small,), reps=500)
key = (((8, 64), mx.float32), mx.default_device().type)
pc["python_call_no_eval_us"] = 1e6 * timeit.timeit(lambda: opt(small), number=2000) / 2000
pc["raw_obj_call_no_eval_us"] = 1e6 * timeit.timeit(lambda: kobj(inputs=[small], **call), number=2000) / 2000
print(tag, "per call us", {k: round(v, 2) for k, v in pc.items()}, flush=True)
rows = []
if tag == "wip":
    NANMAX = HDR.replace("template <typename T> __device__ __forceinline__ T mt_max(T a, T b) { return (a > b || a != a) ? a : b; }",
        "template <typename T> __device__ __forceinline__ T mt_max(T a, T b) { return (a > b || a != a) ? a : b; }\n"
        "__device__ __forceinline__ float mt_max(float a, float b) { float r; asm(\"max.NaN.f32 %0, %1, %2;\" : \"=f\"(r) : \"f\"(a), \"f\"(b)); return r; }")
    import mlx.nn as nn
    for dt in ("bfloat16", "float32"):
        mdt = getattr(mx, dt)
        for R, Lc, T in ((32768, 4096, 128), (4096, 16384, 512), (4096, 16384, 256)):
            x = mx.random.normal((R, Lc)).astype(mdt); lab = mx.random.randint(0, Lc, (R,)).astype(mx.int32); mx.eval(x, lab)
            ref = nn.losses.cross_entropy(x.astype(mx.float32), lab, reduction="none")
            for hdr_name, hdr in (("select", HDR), ("max.NaN", NANMAX)):
                src = ce_src(dt, Lc, T, 4, 2)
                k = mx.fast.cuda_kernel(name=f"ce{abs(hash((hdr, src))) % 10**8}", input_names=["inp", "lab"], output_names=["out"], source=src, header=hdr, ensure_row_contiguous=True)
                fn = lambda a, b: k(inputs=[a, b], grid=(R * T, 1, 1), threadgroup=(T, 1, 1), output_shapes=[(R,)], output_dtypes=[mdt])[0]
                out = fn(x, lab); err = float(mx.max(mx.abs(out.astype(mx.float32) - ref)).item())
                t = time_mlx(fn, (x, lab)); gbs = (x.nbytes + lab.nbytes + R * x.itemsize) / t / 1e9
                rows.append(dict(dtype=dt, rows=R, cols=Lc, T=T, max=hdr_name, gbs=gbs, maxerr=err))
                print(rows[-1], flush=True)
json.dump({"per_call_us": pc, "ce_max": rows}, open(f"{OUT}/exp2_{tag}.json", "w"), indent=1)
