"""``bsafusion`` command-line tool.

Each sub-command lives in its own module of :mod:`bsafusion.commands` exposing
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. User errors
(:class:`~bsafusion.errors.InputError`) print one line on stderr and exit with status 2, with no
traceback; anything else is a bug and keeps its traceback. Ctrl-C and SIGTERM stop a command
with status 130, leaving no partial output (see :func:`bsafusion.io.staged_outputs`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from typing import Iterator, Sequence

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
        module = importlib.import_module(f"bsafusion.commands.{name}")
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so unfinished outputs are removed rather than left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_interrupts():
            return int(args._run(args) or 0)
    except InputError as exc:
        print(f"bsafusion {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bsafusion {args.command}: interrupted; unfinished outputs were not written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
