"""The ``quant-retriever`` command line: :func:`main`. Its help text (what each command does)
is :mod:`quant_retriever.cli.parser`'s docstring; ``quant-retriever --help`` prints it."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from quant_retriever.cli.output import one_line, print_json
from quant_retriever.cli.parser import build_parser
from quant_retriever.cli.store_commands import PROG

__all__ = ["main"]

# Errors that mean bad input or an unusable environment: one line, no traceback.
_USER_ERRORS = (ValueError, TypeError, OSError, ImportError, RuntimeError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``quant-retriever`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return _run(args)


def _run(args) -> int:
    if args.quiet:
        # Our own bars are turned off by progress=False. tqdm reads this variable once, when it
        # is imported, so it reaches only the processes started from here (this one has already
        # imported tqdm by now).
        os.environ["TQDM_DISABLE"] = "1"
    try:
        result = args.run(args)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as exc:
        if os.environ.get("QUANT_RETRIEVER_DEBUG"):
            raise
        print(f"{PROG} {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    if args.json:
        print_json({k: v for k, v in result.items() if not k.startswith("_")})
    elif args.command == "query":
        args.show(result, args.preview)
    else:
        args.show(result)
    return 0
