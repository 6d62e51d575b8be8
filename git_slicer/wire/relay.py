"""Copy a connection both ways: the egress proxy on the host and the sandbox's forwarder in the
guest relay the same way (stdlib only)."""

from __future__ import annotations

import socket
import threading


def relay(a, b) -> tuple:
    """Copy bytes a -> b and b -> a until both directions end, each half-closed (SHUT_WR) as its
    source finishes; (bytes a -> b, bytes b -> a). The caller closes both sockets."""
    counts = [0, 0]

    def pump(src, dst, index):
        try:
            while True:
                block = src.recv(65536)
                if not block:
                    break
                dst.sendall(block)
                counts[index] += len(block)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    other = threading.Thread(target=pump, args=(a, b, 0), daemon=True)
    other.start()
    pump(b, a, 1)
    other.join()
    return counts[0], counts[1]
