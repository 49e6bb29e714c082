"""Test support: run one Python program as several ranks of MLX's ring backend over the loopback
address, as ``mlx.launch --backend ring -n N`` does, but with free ports (tests run beside other
tests), a bounded time, and every rank's output kept: a rank that fails fails the caller with its
own message, and the other ranks are stopped.

The ring backend reads ``MLX_HOSTFILE`` (a JSON list with one list of "ip:port" per rank) and
``MLX_RANK`` (mlx/distributed/ring/ring.cpp; mlx/_distributed_utils/launch.py writes the same).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]


class LaunchError(AssertionError):
    """A rank exited with an error, or the ranks ran past their time."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (held open together while
    chosen, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch(argv: list[str], ranks: int, timeout: float = 120.0) -> list[str]:
    """Run ``python *argv`` as ``ranks`` ranks of the ring backend on 127.0.0.1.

    Args:
        argv: the program and its arguments, after the interpreter (``["-m", "tests.x", "a"]``).
        ranks: how many processes.
        timeout: seconds for all of them; past it every rank still running is killed.

    Returns:
        Each rank's standard output, in rank order.

    Raises:
        LaunchError: a rank exited with a non-zero status (the standard error of every rank
            that failed is in the message), or the ranks ran past ``timeout``.

    Example:
        >>> launch(["-c", "import mlx.core as mx; print(mx.distributed.init().rank())"], 2)
        ['0\\n', '1\\n']
    """
    with tempfile.TemporaryDirectory(prefix="mlxtriton-ranks-") as tmp:
        tmp = pathlib.Path(tmp)
        hostfile = tmp / "hosts.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(ranks)]))
        env = dict(os.environ, MLX_HOSTFILE=str(hostfile),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        procs, outs, errs = [], [], []
        try:
            for rank in range(ranks):
                outs.append(open(tmp / f"out{rank}", "w+"))
                errs.append(open(tmp / f"err{rank}", "w+"))
                procs.append(subprocess.Popen(
                    [sys.executable, *argv], cwd=ROOT, env=dict(env, MLX_RANK=str(rank)),
                    stdout=outs[-1], stderr=errs[-1], stdin=subprocess.DEVNULL,
                ))
            deadline = time.monotonic() + timeout
            while True:
                codes = [p.poll() for p in procs]
                if any(c not in (None, 0) for c in codes):
                    # The other ranks usually fail in turn (a peer lost mid-collective): give them
                    # a moment, then report every failed rank; the cause is among them.
                    end = time.monotonic() + 2.0
                    while any(c is None for c in codes) and time.monotonic() < end:
                        time.sleep(0.05)
                        codes = [p.poll() for p in procs]
                    failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
                    raise LaunchError("\n".join(
                        _report(f"rank {r} exited with status {codes[r]}", r, outs, errs) for r in failed))
                if all(c == 0 for c in codes):
                    return [_read(f) for f in outs]
                if time.monotonic() > deadline:
                    running = [r for r, c in enumerate(codes) if c is None]
                    raise LaunchError("\n".join(
                        _report(f"ranks {running} still running after {timeout:.0f} s", r, outs, errs)
                        for r in running))
                time.sleep(0.05)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for f in outs + errs:
                f.close()


def _read(f) -> str:
    f.flush()
    f.seek(0)
    return f.read()


def _report(what: str, rank: int, outs, errs, tail: int = 4000) -> str:
    err, out = _read(errs[rank]), _read(outs[rank])
    return f"{what}\n--- rank {rank} stderr (tail) ---\n{err[-tail:]}\n--- rank {rank} stdout (tail) ---\n{out[-tail:]}"
