"""Command line: ``python -m benchmarks {pack,pingpong} [options]`` (pingpong under ``mpiexec -n 2``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from . import pack_bench, pingpong

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="hpcore benchmarks, each against its peer in the same run (medians and ratios).")
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    p = sub.add_parser("pack", help="pack/unpack throughput vs MPI_Pack and memcpy (serial)",
                       description=pack_bench.__doc__)
    pack_bench.add_arguments(p)
    q = sub.add_parser("pingpong", help="ping-pong latency and bandwidth vs plain mpi4py (mpiexec -n 2)",
                       description=pingpong.__doc__)
    pingpong.add_arguments(q)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "pack":
        from . import pack_bench

        return pack_bench.run(args, markdown=args.markdown)
    from . import pingpong

    return pingpong.run(args, markdown=args.markdown)


if __name__ == "__main__":
    sys.exit(main())
