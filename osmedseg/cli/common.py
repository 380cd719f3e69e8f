"""Shared CLI plumbing: one-line errors for user-fixable problems, common flags."""
from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

from osmedseg.errors import OsmError


def cli_entry(main: Callable[[list[str] | None], None]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI ``main(argv)``: an OsmError prints ``osmedseg: error: ...`` as one line and exits with code 2."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            main(argv)
        except OsmError as e:
            print(f"osmedseg: error: {' '.join(str(e).split())}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("osmedseg: interrupted", file=sys.stderr)
            sys.exit(130)
        return 0

    return wrapper


def add_folder_args(parser: argparse.ArgumentParser, *kinds: str) -> None:
    """Add ``--raw``, ``--preprocessed`` and/or ``--results`` overrides of the environment variables."""
    for kind in kinds:
        parser.add_argument(f"--{kind}", default=None, metavar="DIR",
                            help=f"{kind} data folder (overrides the osmedseg_{kind} environment variable)")


def add_dataset_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", dest="dataset", required=True,
                        help="dataset id (1), full name (Dataset001_OASIS) or bare name (OASIS)")


def add_seed_arg(parser: argparse.ArgumentParser, default: int = 12345) -> None:
    parser.add_argument("-seed", type=int, default=default, help=f"random seed (default {default})")


def add_pbar_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no_pbar", action="store_true", help="disable progress bars (for cluster logs)")
