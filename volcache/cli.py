"""The ``volcache`` command: ``info`` and ``bench``."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .backends import available_backends, backend_class


def _info(args: argparse.Namespace) -> int:
    print(f"volcache {__version__}")
    print("backends (best first):")
    for name, reason in available_backends().items():
        caps = backend_class(name).capabilities
        state = "available" if reason is None else f"unavailable: {reason}"
        print(f"  {name:7} {state}")
        print(f"          purged by {caps.purger}; touching a purged page {caps.touch_purged}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    print("volcache bench: not implemented yet", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="volcache", description=__doc__)
    parser.add_argument("--version", action="version", version=f"volcache {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, backends and what this machine offers")
    commands.add_parser("bench", help="compare caches under real memory pressure")
    args = parser.parse_args(argv)
    return {"info": _info, "bench": _bench}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
