"""Fusion, rewriting and lowering decide the same in every process: the same programs, optimised in
fresh Python processes with other hash seeds and other memory layouts, give the same kernels, the
same kernel names and the same explanation. (Orders taken from sets of equations or vars follow
memory addresses, and sets of strings follow PYTHONHASHSEED: both change between processes.)"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import mlxtriton

ROOT = Path(mlxtriton.__file__).resolve().parent.parent

# Each process first allocates a seed-dependent number of vars, equations and tuples, so that the
# objects of the programs land at other addresses than in the other processes.
SCRIPT = r"""
import os, sys
n = int(os.environ["PYTHONHASHSEED"])
from mlxtriton.graph import Eqn, Var
ballast = ([Var((1,), "float32") for _ in range(n * 37 % 997)] + [Eqn("Abs", (), ()) for _ in range(n * 17 % 499)]
           + [(object(), n) for _ in range(n * 53 % 991)])

import mlx.core as mx
import mlxtriton
from mlxtriton import examples

x = mx.random.normal((64, 128), key=mx.random.key(0))
w, b = mx.random.normal((128,), key=mx.random.key(1)), mx.random.normal((128,), key=mx.random.key(2))
programs = [
    ("softmax times column sum", lambda x: mx.softmax(x, axis=-1) * mx.sum(x, axis=0, keepdims=True), (x,)),
    ("llama block", examples.init_eval(examples.LlamaBlock()), examples.example_inputs("llama")),
    ("cross-entropy", examples.cross_entropy_loss, examples.example_inputs("cross_entropy")),
    ("layer norm gradients", mx.grad(lambda x, w, b: mx.fast.layer_norm(x, w, b, 1e-5).sum(), argnums=(0, 1, 2)),
     (x, w, b)),
]
out = []
for name, fn, args in programs:
    for chip, target in (("m3", "metal"), ("h200", "cuda")):
        f = mlxtriton.optimize(fn, chip=chip)
        out += [f"== {name} for {chip} ({target})", f.trace(*args).lower(target).as_text(), str(f.explain(*args))]
sys.stdout.write("\n".join(out))
"""

SEEDS = (0, 1, 2, 3, 7)


def test_every_process_fuses_and_lowers_alike():
    env = {k: v for k, v in os.environ.items() if k != "MLXTRITON_CHIP"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, env={**env, "PYTHONHASHSEED": str(seed)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in SEEDS]
    outputs = []
    for seed, p in zip(SEEDS, procs):
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, f"PYTHONHASHSEED={seed}:\n{stderr}"
        outputs.append(stdout)
    first = outputs[0]
    assert sum(line.startswith("== ") for line in first.splitlines()) == 8 and "kernel " in first
    for seed, text in zip(SEEDS[1:], outputs[1:]):
        diff = "\n".join(list(difflib.unified_diff(first.splitlines(), text.splitlines(), "seed 0", f"seed {seed}",
                                                   lineterm=""))[:40])
        assert text == first, f"PYTHONHASHSEED={seed} differs from 0:\n{diff}"
