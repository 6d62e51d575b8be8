"""A double of the Firecracker / Cloud Hypervisor vsock muxer (hybrid vsock), NOT a hypervisor.

The VMM's host side is a unix socket: a client sends `CONNECT <port>\\n`, and when something in
the guest listens on that vsock port the muxer answers `OK <hostport>\\n` and splices the bytes;
when nothing listens it closes the connection without an answer. Here the "guest's vsock ports"
are unix sockets (`ports={5000: "/path/agent.sock"}`), e.g. `git slicer agent --listen unix:...`.
Like Firecracker, "connect" is matched case-insensitively.
"""

from __future__ import annotations

import os
import socket
import threading


class FakeFirecrackerRelay:
    def __init__(self, uds_path: str, ports: dict):
        self.uds_path = uds_path
        self.ports = dict(ports)
        self.connects = []                      # ports asked for, in order
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(uds_path)
        self.sock.listen(8)
        self._next_host_port = 1073741824       # Firecracker's local ports start at 2^30
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            os.unlink(self.uds_path)
        except OSError:
            pass

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        line = b""
        while not line.endswith(b"\n") and len(line) < 64:
            byte = client.recv(1)
            if not byte:
                break
            line += byte
        words = line.split()
        if len(words) != 2 or words[0].lower() != b"connect" or not words[1].isdigit():
            client.close()
            return
        port = int(words[1])
        self.connects.append(port)
        target = self.ports.get(port)
        guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if target is None:
                raise OSError("nothing listens")
            guest.connect(target)
        except OSError:
            guest.close()
            client.close()                      # no OK: the guest refused
            return
        self._next_host_port += 1
        client.sendall(b"OK %d\n" % self._next_host_port)
        threading.Thread(target=_splice, args=(guest, client), daemon=True).start()
        _splice(client, guest)


def _splice(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
