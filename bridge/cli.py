"""The `gpt2-twins` command line. Each subcommand lives in `bridge/commands/` and calls one
library function; this module only assembles the parsers."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Subcommand name -> module in bridge.commands that defines `add_parser` and `run`.
COMMANDS = {
    "train": "train",
    "generate": "generate",
    "parity": "parity",
    "inspect": "inspect",
    "import-hf": "import_hf",
    "export-hf": "export_hf",
    "bench": "bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt2-twins",
        description="Train GPT-2 in Flax, inspect it in Penzai, and move weights between "
        "the twins and Hugging Face.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"bridge.commands.{module_name}")
        except ModuleNotFoundError as error:
            if error.name != f"bridge.commands.{module_name}":
                raise
            continue  # subcommand not built yet
        sub = module.add_parser(subparsers, name)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        # Importing orbax installs a root handler first; without force the CLI's own
        # level and format would be ignored.
        force=True,
    )
    if not args.verbose:
        # orbax logs every checkpoint read and write through absl at INFO, and JAX logs
        # its search for a TPU backend.
        logging.getLogger("absl").setLevel(logging.WARNING)
        logging.getLogger("jax").setLevel(logging.WARNING)
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"gpt2-twins {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
