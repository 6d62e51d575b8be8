"""`git slicer agent` / `python3 -m git_slicer.agent`: the agent's command line. Stdlib only."""

from __future__ import annotations

import argparse
import sys

from ..wire.framing import Connection
from .server import Agent


def main(argv=None) -> int:
    """`--stdio` (the default): serve stdin/stdout. `--listen ADDR`: serve a socket (agent/listen.py)."""
    parser = argparse.ArgumentParser(prog="git-slicer agent")
    parser.add_argument("--stdio", action="store_true")
    parser.add_argument("--listen", metavar="ADDR")
    parser.add_argument("--token-file", metavar="FILE")
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--idle", type=float, default=0, metavar="SECONDS",
                        help="with --listen: end after SECONDS without an open connection")
    args = parser.parse_args(list(argv or []))
    if args.listen:
        from .listen import serve       # sockets and threads only for --listen: stdio starts lighter
        return serve(args.listen, args.token_file, args.once, args.idle)
    conn = Connection(sys.stdin.buffer, sys.stdout.buffer)
    # Nothing else may write to the protocol stream.
    sys.stdout = sys.stderr
    return Agent(conn).serve()
