"""The long fuzzing profile: ``python -m tests.fuzz --programs 3000``.

Program ``i`` is drawn from ``random.Random(i)``: the same on every run. Programs run in a worker
process, so a crash or a hang (reported as such, with the program's number and the path it was
in; plain MLX's own, before any mlxtriton path, as a class of their own) costs one program, not
the run. At the end, disagreements are grouped by class and each class is printed with how
many programs showed it, on which paths, and a reduced standalone reproduction.

    python -m tests.fuzz --programs 3000 --log findings.jsonl   # the run
    python -m tests.fuzz --only 1234                             # replay one program
    python -m tests.fuzz --corners                               # every corner, every path

Pin it to one core on a shared machine: ``taskset -c 0 python -m tests.fuzz ...``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import select
import subprocess
import sys
import time
import warnings

from tests.fuzz import differential
from tests.fuzz.differential import Finding, Path
from tests.fuzz.programs import Program, RandomDraw, draw_program


def _program(number: int, max_steps: int) -> Program:
    return draw_program(RandomDraw(number), max_steps)


def _finding_json(f: Finding) -> dict:
    return {"api": f.path.api, "chip": f.path.chip, "interpret": f.path.interpret,
            "mlx_compile": f.path.mlx_compile, "bare": f.path.bare, "gradient": f.path.gradient,
            "call": f.call, "kind": f.kind, "detail": f.detail, "signature": f.signature}


def _finding(d: dict) -> Finding:
    path = Path(d["api"], d["chip"], d["interpret"], d["mlx_compile"], d.get("bare", False),
                d.get("gradient", ""))
    return Finding(path, d["call"], d["kind"], d["detail"], d["signature"])


def _paths(args) -> tuple[Path, ...]:
    if args.gradients:
        return differential.GRADIENT_PATHS
    return differential.PATHS + (differential.COMPILED_PATHS if args.mlx_compile else ())


def _worker(args) -> int:
    """Run programs ``start`` .. ``start + programs - 1``; one JSON line each."""
    for number in range(args.start, args.start + args.programs):
        print(json.dumps({"started": number}), flush=True)
        try:
            findings = differential.run(
                _program(number, args.max_steps), _paths(args),
                lambda where: print(json.dumps({"entering": where}), flush=True))
            result = {"program": number, "findings": [_finding_json(f) for f in findings]}
        except Exception as err:  # noqa: BLE001 (the harness itself: report and go on)
            result = {"program": number, "error": repr(err)[:300]}
        print(json.dumps(result), flush=True)
    return 0


def _reduce(args) -> int:
    """Replay one program; reduce and print each of its findings (or the one of ``--key``)."""
    program = _program(args.only, args.max_steps)
    print(program.source())
    findings = differential.run(program, _paths(args))
    shown = set()
    for f in findings:
        print(f)
    for f in findings:
        if f.key in shown or (args.key and f.key != args.key):
            continue
        shown.add(f.key)
        reduced = differential.reduce(program, f, args.reduce_budget)
        print(f"---- {f.key}\n{differential.reproduction(reduced, f)}")
    return 1 if findings else 0


def _corners(args) -> int:
    from tests.fuzz import corners

    failed = 0
    # as tests/test_fuzz.py runs them: the gradient paths only when asked for
    paths = _paths(args) if args.gradients else tuple(p for p in _paths(args) if not p.gradient)
    for name, case in corners.CASES.items():
        findings = differential.run(case.build(), paths)
        failed += bool(findings)
        for f in findings[:1]:
            print(f"{name}: {f}  (+{len(findings) - 1} more)" if len(findings) > 1 else f"{name}: {f}")
    print(f"{failed} of {len(corners.CASES)} corner cases disagree")
    return 1 if failed else 0


def _command(args, *extra) -> list[str]:
    return [sys.executable, "-m", "tests.fuzz", "--max-steps", str(args.max_steps),
            *(["--mlx-compile"] if args.mlx_compile else []),
            *(["--gradients"] if args.gradients else []), *extra]


def _run(args) -> int:
    classes: dict[str, list[tuple[int, Finding]]] = collections.defaultdict(list)
    examples: dict[str, tuple[int, int, Finding]] = {}  # key -> (number, lines, finding)
    started = time.time()
    done = 0
    log = open(args.log, "a") if args.log else None
    stop = args.start + args.programs
    number = args.start

    def record(n: int, findings: list[Finding]) -> None:
        lines = len(_program(n, args.max_steps).lines)
        for f in findings:
            classes[f.key].append((n, f))
            if f.key not in examples or lines < examples[f.key][1]:
                examples[f.key] = (n, lines, f)
            if log:
                log.write(json.dumps({"program": n, "key": f.key, "finding": str(f)}) + "\n")
                log.flush()

    while number < stop and (args.minutes is None or time.time() - started < 60 * args.minutes):
        worker = subprocess.Popen(_command(args, "--worker", "--start", str(number), "--programs",
                                           str(stop - number)), stdout=subprocess.PIPE)
        current, last, pending, lines = None, time.time(), b"", []
        where = ""  # the path the current program is in (`differential.run`'s ``entering``)
        while True:
            if not lines:  # read what the worker wrote (unbuffered: select sees all there is)
                ready, _, _ = select.select([worker.stdout], [], [], 0.5)
                chunk = os.read(worker.stdout.fileno(), 1 << 16) if ready else None
                if chunk == b"":  # the worker exited
                    worker.wait()
                    break
                if chunk:
                    *complete, pending = (pending + chunk).split(b"\n")
                    lines += complete
                    continue
                out_of_time = args.minutes is not None and time.time() - started > 60 * args.minutes
                if out_of_time or (current is not None and time.time() - last > args.timeout):
                    worker.kill()
                    worker.wait()
                    current = None if out_of_time else current
                    break
                continue
            line = lines.pop(0)
            message = json.loads(line)
            if "started" in message:
                current, last, where = message["started"], time.time(), ""
                continue
            if "entering" in message:
                where = message["entering"]
                continue
            current = None
            done += 1
            number = message["program"] + 1
            if "error" in message:
                record(message["program"], [Finding(Path("harness"), 0, "harness error", message["error"])])
            else:
                record(message["program"], [_finding(f) for f in message["findings"]])
            if done % 25 == 0:
                bad = len({n for c in classes.values() for n, _ in c})
                print(f"[{time.time() - started:7.0f} s] {done} programs, {bad} with findings, "
                      f"{len(classes)} classes", flush=True)
        if current is not None:  # the worker died or hung in this program
            kind = "hang" if worker.returncode in (-9, None) else f"crash (exit {worker.returncode})"
            # plain MLX's own hangs and crashes (not mlxtriton's) are a class of their own
            kind += f" in {where}" if where == differential.PLAIN_MLX else ""
            record(current, [Finding(Path("harness"), 0, kind, f"program {current} in {where}")])
            done += 1
            number = current + 1

    bad = sorted({n for c in classes.values() for n, _ in c})
    print(f"\n{done} programs ({args.start} to {number - 1}) in {time.time() - started:.0f} s: "
          f"{len(bad)} disagreed, {len(classes)} classes\n")
    for key, hits in sorted(classes.items(), key=lambda kv: -len(kv[1])):
        programs = sorted({n for n, _ in hits})
        print("=" * 100)
        print(f"{key}\n  {len(programs)} programs: {programs[:12]}{' ...' if len(programs) > 12 else ''}")
        print(f"  paths: {', '.join(sorted({str(f.path) for _, f in hits}))}")
        n, _, finding = examples[key]
        print(f"  e.g. program {n}: {finding}", flush=True)
        if finding.path.api == "harness" or not args.reduce_budget:
            continue
        try:
            out = subprocess.run(_command(args, "--only", str(n), "--key", key, "--reduce-budget",
                                          str(args.reduce_budget)),
                                 capture_output=True, text=True, timeout=20 * args.timeout)
            print(out.stdout.split(f"---- {key}\n", 1)[-1] if f"---- {key}" in out.stdout
                  else "  (not reproduced on replay)")
        except subprocess.TimeoutExpired:
            print("  (reduction timed out)")
        sys.stdout.flush()
    if log:
        log.close()
    return 1 if classes else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--programs", type=int, default=1000, help="how many programs")
    parser.add_argument("--start", type=int, default=0, help="the first program's number")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this long")
    parser.add_argument("--max-steps", type=int, default=10, help="steps per program, at most")
    parser.add_argument("--mlx-compile", action="store_true",
                        help="also run optimize under MLX's own mx.compile (slow on a CPU host)")
    parser.add_argument("--gradients", action="store_true", help="the gradient paths only")
    parser.add_argument("--only", type=int, default=None, help="replay one program and reduce it")
    parser.add_argument("--key", default=None, help="with --only: reduce this class only")
    parser.add_argument("--corners", action="store_true", help="run every corner case")
    parser.add_argument("--reduce-budget", type=int, default=40, help="runs to reduce each class")
    parser.add_argument("--log", default=None, help="append findings to this JSON-lines file")
    parser.add_argument("--timeout", type=int, default=180, help="seconds per program")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.worker:
        return _worker(args)
    if args.only is not None:
        return _reduce(args)
    if args.corners:
        return _corners(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
