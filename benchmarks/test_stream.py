"""Throughput: one large file through protocol v1's stream vs a raw copy, both over a pipe to
another process (1 GB; 128 MB with --quick)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHUNK = bytes(range(256)) * 4096          # 1 MiB, deterministic
RECEIVE_STREAM = ("import sys\nfrom git_slicer.wire.framing import Connection\n"
                  "c = Connection(sys.stdin.buffer, sys.stdout.buffer)\n"
                  "n = sum(len(x) for x in c.recv_stream(1 << 42))\nprint(n)\n")
RECEIVE_RAW = ("import sys\nbuf = bytearray(1 << 20)\nv = memoryview(buf)\nn = 0\n"
               "r = sys.stdin.buffer.raw\nwhile True:\n    k = r.readinto(v)\n    if not k:\n        break\n"
               "    n += k\nprint(n)\n")


def _size(quick):
    return (128 if quick else 1024)


def _send(script, quick, framed):
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    mib = _size(quick)
    if framed:
        from git_slicer.wire.framing import Connection
        conn = Connection(None, proc.stdin)
        conn.send_stream(CHUNK for _ in range(mib))
    else:
        for _ in range(mib):
            proc.stdin.write(CHUNK)
    proc.stdin.close()
    out = proc.stdout.read()
    assert proc.wait() == 0 and int(out) == mib << 20


@pytest.mark.benchmark(group="throughput (1 GB)")
def test_stream_slicer(benchmark, quick, rounds):
    benchmark.pedantic(_send, args=(RECEIVE_STREAM, quick, True), rounds=rounds)


@pytest.mark.benchmark(group="throughput (1 GB)")
def test_stream_baseline_raw_pipe(benchmark, quick, rounds):
    benchmark.pedantic(_send, args=(RECEIVE_RAW, quick, False), rounds=rounds)
