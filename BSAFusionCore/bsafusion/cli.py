"""``bsafusion`` command-line tool.

Each sub-command lives in its own module of :mod:`bsafusion.commands` exposing
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. User errors
(:class:`~bsafusion.errors.InputError`) print one line on stderr and exit with status 2, with no
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from bsafusion import __version__
from bsafusion.errors import InputError

COMMANDS = ("demo", "fuse", "train", "evaluate", "benchmark")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bsafusion",
        description="Register and fuse unaligned CT/PET/SPECT-MRI images in one stage (BSFA-F).",
    )
    parser.add_argument("--version", action="version", version=f"bsafusion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"bsafusion.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bsafusion.commands.{name}":
                continue  # command not installed in this build
            raise
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except InputError as exc:
        print(f"bsafusion {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bsafusion {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
