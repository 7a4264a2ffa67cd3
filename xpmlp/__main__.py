"""``python -m xpmlp info`` (or ``xpmlp info``): the bug-report summary; ``python -m xpmlp train ...``: train.py."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from .cli import main as train  # which imports the rest inside its own Ctrl-C guard

        return train(argv[1:], prog="xpmlp train")
    from .cli import interrupt_again, starting  # (xpmlp.cli imports nothing more)

    sys.unraisablehook = interrupt_again  # a Ctrl-C in a gc callback is not lost
    try:  # all of it: info imports NumPy, JAX and PyTorch to report on them
        with starting():
            return info(argv)
    except KeyboardInterrupt:
        print(f"\n{'xpmlp info' if argv[:1] == ['info'] else 'xpmlp'}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def info(argv: list[str]) -> int:
    """``xpmlp info [--json]``: the report, on stdout."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="xpmlp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("info", help="versions, backends, devices and data location, for bug reports")
    command.add_argument("--json", action="store_true", help="print JSON instead of text")
    commands.add_parser("train", help="train on MNIST (python -m xpmlp train --help)")
    args = parser.parse_args(argv)
    from .cli.runs import say
    from .info import format_report, report

    found = report()
    say(json.dumps(found, indent=2) if args.json else format_report(found))  # | head: what head took is enough
    return 0


if __name__ == "__main__":
    sys.exit(main())
