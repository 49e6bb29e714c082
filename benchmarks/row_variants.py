"""Benchmark: hand-written variants of the softmax and cross-entropy row kernels on a GPU (CUDA).

Which changes move bf16 softmax and cross-entropy, measured one at a time rather than guessed:
threads per row (T), vector lanes (V), keeping exp(x - max) in registers for the write pass
(keep) instead of computing it again, one reciprocal per row instead of a division per element
(rcp), the bf16 -> f32 conversion as a shift the compiler can see through (shift), and for
cross-entropy a separate pass for max(x - max(x)) (passes=3, as traced) or none (passes=2).
Each variant is checked against MLX (maxerr) and timed like benchmarks/row_kernels.py.

Run on the H200: OUT=dir python benchmarks/row_variants.py (writes dir/exp1.json);
results: benchmarks/results/row_variants_h200.json.
"""
import json, math, os, statistics, sys, time
import mlx.core as mx
OUT = os.environ.get("OUT", "/tmp")
res = {"rows": []}

def save():
    json.dump(res, open(f"{OUT}/exp1.json", "w"), indent=1)

def time_mlx(fn, args, reps=40, runs=5):
    for _ in range(3):
        mx.eval(fn(*args))
    mx.synchronize()
    s = []
    for _ in range(runs):
        live = []
        t0 = time.perf_counter()
        for _ in range(reps):
            o = fn(*args); live = live[-2:] + [o]; mx.async_eval(o)
        mx.synchronize()
        s.append((time.perf_counter() - t0) / reps)
    return statistics.median(s)

HDR = """#include <cuda_fp16.h>
#include <cuda_bf16.h>
template <typename T> __device__ __forceinline__ T mt_max(T a, T b) { return (a > b || a != a) ? a : b; }
template <typename T, int N> struct alignas(sizeof(T) * N) mt_vec { T v[N]; };
"""
TY = {"bfloat16": "__nv_bfloat16", "float32": "float"}
TOF = {"bfloat16": "__bfloat162float({})", "float32": "{}"}
FROMF = {"bfloat16": "__float2bfloat16_rn({})", "float32": "{}"}

def block_reduce(acc, op, sm, nw, ident):
    comb = f"mt_max({acc}, o)" if op == "max" else f"{acc} + o"
    s = f"for (int k = 16; k > 0; k >>= 1) {{ float o = __shfl_xor_sync(0xffffffffu, {acc}, k); {acc} = {comb}; }}\n"
    if nw > 1:
        s += f"if (wl == 0) {sm}[w] = {acc};\n__syncthreads();\n{acc} = wl < {nw} ? {sm}[wl] : {ident};\n"
        s += f"for (int k = 16; k > 0; k >>= 1) {{ float o = __shfl_xor_sync(0xffffffffu, {acc}, k); {acc} = {comb}; }}\n"
    return s

def softmax_src(dt, L, T, V, keep, rcp, fast_exp=False, shift=False):
    C = L // (T * V); assert C * T * V == L
    nw = T // 32; ty = TY[dt]; tof = TOF[dt]; fromf = FROMF[dt]
    if shift and dt == "bfloat16":
        tof = "__uint_as_float(static_cast<unsigned>(__bfloat16_as_ushort({})) << 16)"
    ex = "__expf" if fast_exp else "expf"
    s = f"__shared__ float sm1[{max(nw,1)}]; __shared__ float sm2[{max(nw,1)}];\n"
    s += "const int tid = threadIdx.x; const int w = tid / 32, wl = tid % 32;\n"
    s += f"const int base = blockIdx.x * {L};\n{ty} r[{C*V}];\nfloat m = __int_as_float(0xff800000);\n"
    s += f"#pragma unroll\nfor (int c = 0; c < {C}; ++c) {{\n const mt_vec<{ty},{V}> v = *reinterpret_cast<const mt_vec<{ty},{V}>*>(inp + base + (c * {T} + tid) * {V});\n"
    s += f" #pragma unroll\n for (int l = 0; l < {V}; ++l) {{ r[c*{V}+l] = v.v[l]; m = mt_max(m, {tof.format('v.v[l]')}); }}\n}}\n"
    s += block_reduce("m", "max", "sm1", nw, "__int_as_float(0xff800000)")
    s += "float sum = 0.0f;\n" + (f"float e[{C*V}];\n" if keep else "")
    s += f"#pragma unroll\nfor (int i = 0; i < {C*V}; ++i) {{ const float ev = {ex}({tof.format('r[i]')} - m); sum += ev; " + ("e[i] = ev; " if keep else "") + "}\n"
    s += block_reduce("sum", "sum", "sm2", nw, "0.0f")
    if rcp:
        s += "const float inv = 1.0f / sum;\n"
    s += f"#pragma unroll\nfor (int c = 0; c < {C}; ++c) {{\n mt_vec<{ty},{V}> o;\n #pragma unroll\n for (int l = 0; l < {V}; ++l) {{\n"
    ev = "e[c*%d+l]" % V if keep else f"{ex}({tof.format(f'r[c*{V}+l]')} - m)"
    s += f"  const float ev = {ev};\n  o.v[l] = {fromf.format('ev * inv' if rcp else 'ev / sum')};\n }}\n"
    s += f" *reinterpret_cast<mt_vec<{ty},{V}>*>(out + base + (c * {T} + tid) * {V}) = o;\n}}\n"
    return s

def ce_src(dt, L, T, V, passes):
    C = L // (T * V); assert C * T * V == L
    nw = T // 32; ty = TY[dt]; tof = TOF[dt]; fromf = FROMF[dt]
    s = f"__shared__ float sm1[{max(nw,1)}]; __shared__ float sm2[{max(nw,1)}]; __shared__ float sm3[{max(nw,1)}];\n"
    s += "const int tid = threadIdx.x; const int w = tid / 32, wl = tid % 32;\n"
    s += f"const int base = blockIdx.x * {L};\n{ty} r[{C*V}];\nfloat m = __int_as_float(0xff800000);\n"
    s += f"#pragma unroll\nfor (int c = 0; c < {C}; ++c) {{\n const mt_vec<{ty},{V}> v = *reinterpret_cast<const mt_vec<{ty},{V}>*>(inp + base + (c * {T} + tid) * {V});\n"
    s += f" #pragma unroll\n for (int l = 0; l < {V}; ++l) {{ r[c*{V}+l] = v.v[l]; m = mt_max(m, {tof.format('v.v[l]')}); }}\n}}\n"
    s += block_reduce("m", "max", "sm1", nw, "__int_as_float(0xff800000)")
    if passes == 3:
        s += f"float m2 = __int_as_float(0xff800000);\n#pragma unroll\nfor (int i = 0; i < {C*V}; ++i) m2 = mt_max(m2, {tof.format('r[i]')} - m);\n"
        s += block_reduce("m2", "max", "sm2", nw, "__int_as_float(0xff800000)")
    else:
        s += "const float m2 = m - m;\n"
    s += f"float sum = 0.0f;\n#pragma unroll\nfor (int i = 0; i < {C*V}; ++i) sum += expf(({tof.format('r[i]')} - m) - m2);\n"
    s += block_reduce("sum", "sum", "sm3", nw, "0.0f")
    s += "const float lse = fabsf(m2) == __int_as_float(0x7f800000) ? m2 : m2 + logf(sum);\n"
    s += f"int j = lab[blockIdx.x]; j = j < 0 ? j + {L} : j;\n"
    s += f"const float g = {tof.format('inp[base + j]')} - m;\n"
    s += f"if (tid == 0) out[blockIdx.x] = {fromf.format('lse - g')};\n"
    return s

KERNELS = {}
def kern(name, src, inputs):
    key = (name, src)
    if key not in KERNELS:
        KERNELS[key] = mx.fast.cuda_kernel(name=name + "_" + str(abs(hash(src)) % 10**8), input_names=inputs, output_names=["out"],
                                           source=src, header=HDR, ensure_row_contiguous=True)
    return KERNELS[key]

def run_variant(family, dt, R, L, T, V, args, ref, **kw):
    mdt = getattr(mx, dt)
    if family == "softmax":
        src = softmax_src(dt, L, T, V, **kw); k = kern("sm", src, ["inp"])
        fn = lambda x: k(inputs=[x], grid=(R * T, 1, 1), threadgroup=(T, 1, 1), output_shapes=[(R, L)], output_dtypes=[mdt])[0]
        nbytes = 2 * args[0].nbytes
    else:
        src = ce_src(dt, L, T, V, **kw); k = kern("ce", src, ["inp", "lab"])
        fn = lambda x, lab: k(inputs=[x, lab], grid=(R * T, 1, 1), threadgroup=(T, 1, 1), output_shapes=[(R,)], output_dtypes=[mdt])[0]
        nbytes = args[0].nbytes + args[1].nbytes + R * args[0].itemsize
    try:
        out = fn(*args); mx.eval(out)
        err = float(mx.max(mx.abs(out.astype(mx.float32) - ref.astype(mx.float32))).item())
        t = time_mlx(fn, args)
    except Exception as e:
        print("FAIL", family, dt, R, L, T, V, kw, e, flush=True); return
    row = dict(family=family, dtype=dt, rows=R, cols=L, T=T, V=V, **kw, us=t * 1e6, gbs=nbytes / t / 1e9, maxerr=err)
    res["rows"].append(row); save()
    print(f"{family:8s} {dt:9s} {R}x{L} T={T:4d} V={V} {kw} {row['gbs']:7.0f} GB/s err {err:.2g}", flush=True)

def main():
    import mlx.nn as nn
    sys.path.insert(0, os.getcwd())
    import mlxtriton
    from benchmarks.row_kernels import triton_softmax_gbs
    for dt in ("bfloat16", "float32"):
        mdt = getattr(mx, dt); V8 = 16 // mx.zeros((1,), mdt).itemsize
        for R, L in ((32768, 4096), (4096, 16384)):
            x = mx.random.normal((R, L)).astype(mdt); mx.eval(x)
            ref = mx.softmax(x.astype(mx.float32), axis=-1).astype(mdt)
            comp = lambda x: (lambda e: e / mx.sum(e, axis=-1, keepdims=True))(mx.exp(x - mx.max(x, axis=-1, keepdims=True)))
            opt = mlxtriton.optimize(comp)
            for nm, fn in (("mlxtriton", opt), ("native", lambda x: mx.softmax(x, axis=-1)), ("copy", lambda x: x + 0)):
                t = time_mlx(fn, (x,)); row = dict(family="softmax", dtype=dt, rows=R, cols=L, variant=nm, gbs=2 * x.nbytes / t / 1e9)
                res["rows"].append(row); print(row, flush=True)
            try:
                res["rows"].append(dict(family="softmax", dtype=dt, rows=R, cols=L, variant="triton", gbs=triton_softmax_gbs(R, L, dt))); print(res["rows"][-1], flush=True)
            except Exception as e:
                print("triton failed", e)
            Ts = [256, 512, 128] if L == 4096 else [1024, 512, 256]
            Vs = [4, V8] if V8 != 4 else [4]
            for T in Ts:
                for V in Vs:
                    for keep in (0, 1):
                        for rcp in (0, 1):
                            if dt == "float32" and (keep, rcp) not in ((0, 0), (1, 1)) :
                                continue
                            if L // (T * V) < 1 or L % (T * V):
                                continue
                            run_variant("softmax", dt, R, L, T, V, (x,), ref, keep=keep, rcp=rcp)
            if dt == "bfloat16":
                for T in Ts[:2]:
                    run_variant("softmax", dt, R, L, T, V8, (x,), ref, keep=0, rcp=0, shift=True)
                    run_variant("softmax", dt, R, L, T, 4, (x,), ref, keep=0, rcp=0, shift=True)
                run_variant("softmax", dt, R, L, Ts[0], V8, (x,), ref, keep=1, rcp=1, fast_exp=True)
            # cross-entropy
            lab = mx.random.randint(0, L, (R,)).astype(mx.int32); mx.eval(lab)
            ce = lambda lg, lb: nn.losses.cross_entropy(lg, lb, reduction="none")
            ref = ce(x.astype(mx.float32), lab)
            opt = mlxtriton.optimize(ce)
            for nm, fn in (("mlxtriton", opt), ("mx.compile", mx.compile(ce))):
                t = time_mlx(fn, (x, lab)); row = dict(family="ce", dtype=dt, rows=R, cols=L, variant=nm, gbs=(x.nbytes + lab.nbytes + R * x.itemsize) / t / 1e9)
                res["rows"].append(row); print(row, flush=True)
            for T in Ts:
                for V in Vs:
                    for passes in (3, 2):
                        if L % (T * V):
                            continue
                        run_variant("ce", dt, R, L, T, V, (x, lab), ref, passes=passes)
            del x
    # per-call cost on a tiny input
    small = mx.random.normal((8, 64)); mx.eval(small)
    opt = mlxtriton.optimize(lambda x: mx.softmax(x, axis=-1)); opt(small)
    from mlxtriton.runtime import launch as L
    (kobj_name, kobj), = list(L._KERNELS.items())[-1:]
    low = opt.trace(small).lower("cuda")[0]
    call = low.call_kwargs(); call["output_dtypes"] = [mx.float32]
    call2 = dict(call); call2["output_shapes"] = [tuple(s) for s in call["output_shapes"]]
    pc = {}
    for nm, fn in {"mx.softmax": lambda x: mx.softmax(x, axis=-1), "x*2": lambda x: x * 2,
                   "mlxtriton": opt, "raw_obj_call": lambda x: kobj(inputs=[x], **call),
                   "raw_obj_tuple_shapes": lambda x: kobj(inputs=[x], **call2),
                   "compiled_softmax": mx.compile(lambda x: mx.softmax(x, axis=-1))}.items():
        pc[nm] = 1e6 * time_mlx(fn, (small,), reps=500)
    print("per call us", pc, flush=True)
    res["per_call_us"] = pc; save()

main()
