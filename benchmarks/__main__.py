"""Command line: ``python -m benchmarks <command> [options]``.

Each benchmark is a module of this package that defines ``COMMAND`` (the
subcommand name), ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args, markdown=False) -> int``. MPI benchmarks say in ``HELP`` how many
ranks they want (``mpiexec -n N python -m benchmarks <command>``).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

__all__ = ["main", "commands"]


def commands() -> dict:
    """Subcommand name -> module, for every benchmark module of this package."""
    found = {}
    package = importlib.import_module(__package__ or "benchmarks")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name in ("common", "__main__"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        name = getattr(module, "COMMAND", None)
        if name is not None:
            found[name] = module
    return found


def _parser(found: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="hpcore benchmarks, each against its peer in the same run (medians and ratios).")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, module in found.items():
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(p)
    return parser


def main(argv=None) -> int:
    found = commands()
    args = _parser(found).parse_args(argv)
    return found[args.command].run(args, markdown=args.markdown)


if __name__ == "__main__":
    sys.exit(main())
