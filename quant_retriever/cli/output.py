"""What the command line prints (tables, JSON, one-line errors) and the model names it shows."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Parser", "print_table", "print_json", "one_line", "preview", "default_model", "model_label"]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- output helpers


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
    """A rich table on a terminal when rich is installed; plain aligned text otherwise."""
    from quant_retriever.bench import format_table

    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            table = Table(title=title, title_justify="left")
            for i, h in enumerate(headers):
                table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
            for r in rows:
                table.add_row(*map(str, r))
            console = Console()
            needed = 1 + sum(3 + max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers))
            if needed <= console.width:  # else rich would crop columns: plain text wraps instead
                console.print(table)
                return
    print(format_table(headers, rows, title))


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False))


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def preview(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(width - 3, 0)].rstrip() + "..."


# --------------------------------------------------------------------------- models and stores


def default_model() -> str:
    """The bundled all-MiniLM-L6-v2 when its package is installed, else its hub name."""
    from quant_retriever.models.settings import DEFAULT_MODEL, local_model_path

    return local_model_path(DEFAULT_MODEL)


def model_label(model: str) -> str:
    """A short name for titles: all-MiniLM-L6-v2 and local paths by their last part."""
    from quant_retriever.models.settings import DEFAULT_MODEL, portable_model_name

    name = portable_model_name(model)
    return Path(name).name if name == DEFAULT_MODEL or Path(name).exists() else name


def quiet_transformers() -> None:
    """Turn off transformers' per-load "Loading weights" bar: noise on a command line."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()


# --------------------------------------------------------------------------- index
