"""Public API layer: the command line, ``python -m mlxtriton <command>`` (also the ``mlxtriton`` script).

One function per command, registered with `command`; each imports what it needs when it runs, so
``chips`` starts without loading the tracer or code generator. May import any mlxtriton layer.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

# A command's function gets its own sub-parser to add arguments to, and returns what runs it.
# Arguments the sub-parser does not know are an error, unless it sets ``passes_through``: then they
# reach the command as ``args.extra``.
Runner = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], Runner]
_COMMANDS: dict[str, tuple[str, Configure]] = {}


def command(name: str, help: str) -> Callable[[Configure], Configure]:
    """Register ``fn(parser) -> run(args) -> exit code`` as the subcommand ``name``."""
    def register(fn: Configure) -> Configure:
        if name in _COMMANDS:
            raise ValueError(f"command {name!r} registered twice")
        _COMMANDS[name] = (help, fn)
        return fn
    return register


@command("chips", "list the hardware profiles (all figures and sources for one chip with NAME)")
def _chips(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("name", nargs="?", help="one chip, e.g. m3-max, 'M3 Max', h200")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    def run(args: argparse.Namespace) -> int:
        from mlxtriton import hw
        from mlxtriton.hw import report

        if args.name:
            try:
                chosen = hw.profile(args.name)
            except hw.UnknownChipError as e:
                print(f"mlxtriton chips: {e}", file=sys.stderr)
                return 2
            print(report.as_json([chosen]) if args.json else report.detail(chosen))
            return 0
        try:
            here = hw.resolve("auto")
        except hw.UnknownChipError as e:  # a bad MLXTRITON_CHIP should not hide the table
            print(f"mlxtriton chips: {e}", file=sys.stderr)
            here = None
        named = os.environ.get(hw.ENV_VAR, "").strip().lower() not in ("", "auto")
        how = f"from {hw.ENV_VAR}" if named else "detected"
        listed = hw.profiles()
        print(report.as_json(listed, here) if args.json else report.table(listed, here, how))
        return 0

    return run


@command("demo", "run the main demo (trace, evaluate and fuse a Llama-style block)")
def _demo(parser: argparse.ArgumentParser) -> Runner:
    parser.set_defaults(passes_through=True)  # the demo parses its own arguments

    def run(args: argparse.Namespace) -> int:
        from mlxtriton import demo

        result = demo.main(args.extra) if args.extra else demo.main()
        return int(result or 0)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command of the command line and return its exit code.

    Args:
        argv: The arguments after the program name; None reads ``sys.argv``.

    Returns:
        The exit code: 0 on success.

    Example:
        >>> from mlxtriton.__main__ import main
        >>> main(["chips", "m3", "--json"]) == 0  # doctest: +ELLIPSIS
        {...
        True
    """
    parser = argparse.ArgumentParser(prog="mlxtriton", description="Trace MLX functions into fused kernels.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners = {}
    for name, (help_text, configure) in _COMMANDS.items():
        runners[name] = configure(sub.add_parser(name, help=help_text, description=help_text))
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_through", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return runners[args.command](args)
    except BrokenPipeError:  # output piped into `head`: not an error; keep Python quiet at exit
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
