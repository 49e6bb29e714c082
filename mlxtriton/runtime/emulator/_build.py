"""Runtime layer (emulator): compile translated kernels into shared libraries with the host C++
compiler, cached on disk, and load them with ctypes.

A library is keyed by everything that decides its code: the compiler's identity, the flags, the
emulator's own sources and the translated kernel. Many kernels can be compiled at once: they are
split into one translation unit per processor and front end, compiled in parallel, and each
kernel's key then names its batch's library. Imports nothing from mlxtriton.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable

HERE = pathlib.Path(__file__).parent
INCLUDE = HERE / "include"  # what the front ends share (emu.h, emu_rt.h)
RUNTIME = HERE / "runtime.cpp"
# Per front end: the first line of a translation unit, which includes everything its kernels'
# own includes then find already included (each kernel sits in a namespace of its own).
PRELUDE = {"metal": '#include "mlx_utils.h"\n', "cuda": '#include "cuda_emu.h"\n'}
CACHE_ENV = "MLXTRITON_CACHE_DIR"
COMPILER_ENV = "CXX"

# -O1: kernels compile in a fraction of -O2's time and run fast enough for test shapes. Signed
# overflow wraps as on the GPU (-fwrapv). The sanitizers turn a thread's own out-of-bounds
# array index, an integer division by zero and an oversized shift into launch errors
# (runtime.cpp defines their handlers); -ftrivial-auto-var-init fills locals with a pattern so
# a read before a write gives a wrong value, not a plausible one left on a reused stack.
_FLAGS = ["-std=c++17", "-O1", "-fPIC", "-fwrapv", "-fno-strict-aliasing", "-fno-exceptions",
          "-fno-rtti", "-fvisibility=hidden", "-ffp-contract=off", "-Wno-unknown-pragmas",
          "-Wno-attributes", "-Wno-unused-but-set-variable"]
_SANITIZE = {"gcc": ["-fsanitize=bounds,integer-divide-by-zero,shift", "-fno-sanitize-recover=all"],
             # clang's "bounds" adds local-bounds, which traps instead of calling a handler
             "clang": ["-fsanitize=array-bounds,integer-divide-by-zero,shift",
                       "-fno-sanitize-recover=all"]}
_OPTIONAL = ["-ftrivial-auto-var-init=pattern"]


class BuildError(RuntimeError):
    """The host compiler rejected a kernel, or there is no compiler."""


@dataclass(frozen=True)
class Unit:
    """One kernel to compile: ``text`` declares ``extern "C" int {symbol}(Launch*)``; ``front``
    names the front end whose headers it needs (a key of `PRELUDE`)."""

    key: str
    symbol: str
    text: str
    front: str = "metal"


def _includes(front: str) -> list[str]:
    return ["-I", str(INCLUDE), "-I", str(HERE / front / "include")]


_lock = threading.Lock()
_libraries: dict[str, ctypes.CDLL] = {}


def compiler() -> str:
    """The C++ compiler: ``$CXX``, else g++, c++ or clang++ from PATH."""
    for name in filter(None, (os.environ.get(COMPILER_ENV), "g++", "c++", "clang++")):
        path = shutil.which(name)
        if path:
            return path
    raise BuildError("the kernel emulator needs a C++17 compiler: install g++ (or set $CXX)")


_identities: dict[str, tuple[str, list[str]]] = {}


def _toolchain() -> tuple[str, list[str], str]:
    """(compiler, flags, identity): what every cache key starts with."""
    cxx = compiler()
    if cxx not in _identities:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
        flags = list(_FLAGS) + _SANITIZE["clang" if "clang" in version else "gcc"]
        for flag in _OPTIONAL:
            probe = subprocess.run([cxx, flag, "-x", "c++", "-fsyntax-only", "-"], input="",
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                flags.append(flag)
        sources = hashlib.sha256()
        headers = [p for front in PRELUDE for p in (HERE / front / "include").rglob("*") if p.is_file()]
        for path in sorted(INCLUDE.iterdir()) + sorted(headers) + [RUNTIME]:
            sources.update(str(path.relative_to(HERE)).encode() + b"\0" + path.read_bytes())
        identity = hashlib.sha256("\0".join([cxx, version, *flags, sources.hexdigest()]).encode())
        _identities[cxx] = (identity.hexdigest(), flags)
    identity, flags = _identities[cxx]
    return cxx, flags, identity


def key(text: str) -> str:
    """The cache key of a translation unit's text under the current toolchain."""
    return hashlib.sha256((_toolchain()[2] + "\0" + text).encode()).hexdigest()[:24]


def cache_dir() -> pathlib.Path:
    root = os.environ.get(CACHE_ENV)
    if root:
        base = pathlib.Path(root)
    else:
        base = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "mlxtriton"
    path = base / "emulator"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError:
        path = pathlib.Path(tempfile.gettempdir()) / f"mlxtriton-emulator-{os.getuid()}"
        path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _runtime_object(cxx: str, flags: list[str], identity: str, cache: pathlib.Path) -> pathlib.Path:
    obj = cache / f"runtime-{identity[:24]}.o"
    if not obj.exists():
        tmp = cache / f".runtime-{os.getpid()}-{threading.get_ident()}.o"
        # the runtime itself runs no kernel code: optimised, and never sanitized
        proc = subprocess.run([cxx, *[f for f in flags if not f.startswith("-fsanitize")], "-O2",
                               "-I", str(INCLUDE), "-c", str(RUNTIME), "-o", str(tmp)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise BuildError(f"compiling the emulator runtime failed:\n{proc.stderr}")
        os.replace(tmp, obj)
    return obj


def _library_path(cache: pathlib.Path, k: str) -> pathlib.Path:
    return cache / f"kernel-{k}.so"


def build(units: list[Unit], jobs: int | None = None) -> dict[str, str]:
    """Compile the units not yet cached: one translation unit per job, in parallel.

    Returns:
        The compiler's message for each unit (by key) that does not compile; the others are built.
    """
    cxx, flags, identity = _toolchain()
    cache = cache_dir()
    todo = {u.key: u for u in units if not _library_path(cache, u.key).exists()}
    if not todo:
        return {}
    runtime = _runtime_object(cxx, flags, identity, cache)
    pending = list(todo.values())
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(pending)))
    batches = []  # a front end's kernels spread over the jobs, each batch one front end's
    for front in PRELUDE:
        mine = [u for u in pending if u.front == front]
        n = max(1, round(jobs * len(mine) / len(pending)))
        batches += [b for b in (mine[i::n] for i in range(n)) if b]
    procs = []
    for batch in batches:
        batch_key = hashlib.sha256("".join(u.key for u in batch).encode()).hexdigest()[:24]
        stem = cache / f".batch-{batch_key}-{os.getpid()}-{threading.get_ident()}"
        source = stem.with_suffix(".cpp")
        front = batch[0].front
        source.write_text(PRELUDE[front] + "\n".join(u.text for u in batch))
        out = stem.with_suffix(".so")
        procs.append((batch, batch_key, source, out, _run(
            [cxx, *flags, "-shared", *_includes(front), str(source), str(runtime), "-o", str(out)])))
    errors: dict[str, str] = {}
    for batch, batch_key, source, out, proc in procs:
        _, stderr = proc.communicate()
        source.unlink(missing_ok=True)
        if proc.returncode == 0:
            final = cache / f"batch-{batch_key}.so"
            os.replace(out, final)
            for u in batch:
                _link(final, _library_path(cache, u.key))
        elif len(batch) == 1:
            errors[batch[0].key] = stderr
        else:  # each alone: the others still build, and each error is its own kernel's
            for u in batch:
                errors.update(build([u], 1))
    return errors


def _link(target: pathlib.Path, name: pathlib.Path) -> None:
    tmp = name.with_name(name.name + f".{os.getpid()}.tmp")
    try:
        os.link(target, tmp)
    except OSError:
        shutil.copyfile(target, tmp)
    os.replace(tmp, name)


def entry(unit: Unit) -> Callable[[ctypes.c_void_p], int]:
    """The unit's compiled entry point (building it if needed)."""
    path = _library_path(cache_dir(), unit.key)
    with _lock:
        lib = _libraries.get(unit.key)
        if lib is None:
            if not path.exists():
                errors = build([unit], 1)
                if errors:
                    raise BuildError(f"the host compiler rejected the emulated kernel:\n{errors[unit.key]}")
            lib = _libraries[unit.key] = ctypes.CDLL(str(path))
    fn = getattr(lib, unit.symbol)
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p]
    return fn
