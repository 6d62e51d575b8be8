"""Inside a local sandbox: expose the host's egress proxy on 127.0.0.1, then run a command.

    python3 -S -m git_slicer.agent.forward PORT SOCKET -- CMD [ARGS...]

The sandbox has its own network namespace with nothing but a loopback interface; the host's
proxy is a unix socket bind-mounted at SOCKET. This binds 127.0.0.1:PORT first (so CMD can
connect at once), forks a detached forwarder that copies each TCP connection to a fresh
connection on SOCKET, and execs CMD in this process: CMD keeps the pid, terminal and exit code
of a plain exec, and the forwarder ends with the sandbox. Stdlib only (runs in the guest).
"""

import os
import signal
import socket
import sys
import threading

from ..wire.relay import relay


def _bridge(client, path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        upstream.close()
        return
    relay(client, upstream)
    client.close()
    upstream.close()


def serve(listener, path: str) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_bridge, args=(client, path), daemon=True).start()


def main(argv) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: python3 -m git_slicer.agent.forward PORT SOCKET -- CMD [ARGS...]\n")
        return 2
    port, path, command = int(argv[0]), argv[1], argv[3:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", port))
    except OSError as exc:
        sys.stderr.write("git-slicer: cannot expose the egress proxy on 127.0.0.1:%d: %s\n" % (port, exc.strerror))
        return 1
    listener.listen(64)
    if os.fork() == 0:
        # The forwarder: its own session (a Ctrl-C or hangup meant for CMD does not reach it),
        # no terminal and no pipes held open; it dies with the sandbox's pid namespace.
        try:
            os.setsid()
            for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP):
                signal.signal(sig, signal.SIG_IGN)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            serve(listener, path)
        finally:
            os._exit(0)
    listener.close()
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        sys.stderr.write("git-slicer: command not found in the VM: %s\n" % command[0])
        return 127
    except PermissionError:
        sys.stderr.write("git-slicer: permission denied in the VM: %s\n" % command[0])
        return 126
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
