"""A STRICT double of the Slicer daemon's REST API, built only from what Slicer publishes (its
OpenAPI file, the Go SDK `slicervm/sdk`, the docs; see docs/transports.md). Where the sources are
silent it does the least convenient thing a real daemon might do, so a provider that passes here
relies on nothing undocumented:

- exec is half duplex: the whole request body is read before the command starts;
- without `stdio=base64` (or with `text_only`, an agent that ignores it) output is text and bytes
  that are not UTF-8 are mangled; without an explicit `shell=` the command line is joined and run
  by `/bin/bash -lc` (so arguments with spaces or quotes break);
- `legacy_frames`: untyped `{stdout, stderr, exit_code}` frames, as older in-VM agents send;
  a start failure is `{"error", "exit_code"}` without a type in every mode;
- `no_forward`: a daemon without `/forward` (404);
- `no_background`: an older agent: no exec list (404) and `background=true` ignored (the command
  runs in the foreground and streams);
- background exec (201 {exec_id}), exec list, logs (follow), kill; cp (binary) in both directions;
- `/vm/{h}/forward`: a real WebSocket (client frames must be masked) relayed to a unix socket that
  must lie inside the VM's directory; the double pings first. A socket nobody listens on gets the
  upgrade and then a close frame;
- `/vm/{h}/shell`: a WebSocket PTY speaking the SDK's shell frames (type byte + u32 length);
- create answers 201 (or 408 after `create_timeout`, deleting the VM); DELETE answers
  {message, disk_removed, error} (`delete_error` makes `error` non-empty, with status 200).

It is NOT the real daemon: its "VMs" are directories whose commands run as plain local processes
(as the test user, whatever `uid` says) with HOME set to the VM's home and PATH /usr/bin:/bin, so
git_slicer is not importable there: an agentless guest.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import pty
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import termios
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _State:
    def __init__(self, root: str, hostgroups):
        self.root = root
        self.lock = threading.Lock()
        self.hostgroups = list(hostgroups)
        self.nodes = {}
        self.counter = {g: 0 for g in self.hostgroups}
        self.requests = []          # (method, path, query) log, for contract assertions
        self.background = {}        # hostname -> {exec_id: _Background}
        self.exec_count = 0
        # knobs (see the module docstring)
        self.legacy_frames = False
        self.text_only = False
        self.no_background = False
        self.no_forward = False         # a daemon without /forward (404)
        self.create_status = 201
        self.create_timeout = False
        self.delete_error = ""

    def vm_dir(self, hostname: str) -> str:
        return os.path.join(self.root, hostname)

    def home(self, hostname: str) -> str:
        return os.path.join(self.root, hostname, "home")

    def inside(self, hostname: str, path: str) -> bool:
        real = os.path.realpath(path)
        return real.startswith(os.path.realpath(self.vm_dir(hostname)) + os.sep)


class _Background:
    """A detached process with a ring of NDJSON frames (the double keeps them all)."""

    def __init__(self, exec_id: str, proc, argv, cwd, uid):
        self.exec_id = exec_id
        self.proc = proc
        self.argv = argv
        self.cwd = cwd
        self.uid = uid
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.frames = []
        self.cond = threading.Condition()
        self.done = False

    def add(self, frame: dict) -> None:
        with self.cond:
            frame["id"] = len(self.frames) + 1
            self.frames.append(frame)
            self.cond.notify_all()

    def pump(self) -> None:
        def read(fd, kind):
            while True:
                data = os.read(fd, 65536)
                if not data:
                    return
                self.add({"type": kind, "data": base64.b64encode(data).decode(), "encoding": "base64"})
        err = threading.Thread(target=read, args=(self.proc.stderr.fileno(), "stderr"), daemon=True)
        err.start()
        read(self.proc.stdout.fileno(), "stdout")
        err.join()
        code = self.proc.wait()
        self.add({"type": "exit", "exit_code": code})
        with self.cond:
            self.done = True
            self.cond.notify_all()

    def info(self) -> dict:
        running = self.proc.poll() is None
        info = {"exec_id": self.exec_id, "pid": self.proc.pid, "command": self.argv[0], "args": self.argv[1:],
                "cwd": self.cwd, "started_at": self.started_at, "running": running,
                "bytes_written": 0, "bytes_dropped": 0, "next_id": len(self.frames) + 1, "ring_bytes": 1 << 20}
        if self.uid is not None:
            info["uid"] = self.uid
        if not running:
            info["exit_code"] = self.proc.returncode
        return info


def _accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


class _ServerSocket:
    """The server side of a WebSocket: reads masked client frames, writes unmasked ones."""

    def __init__(self, rfile, wfile):
        self.rfile = rfile
        self.wfile = wfile
        self.lock = threading.Lock()
        self.pongs = 0

    def send(self, opcode: int, payload: bytes = b"") -> None:
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        with self.lock:
            self.wfile.write(header + payload)
            self.wfile.flush()

    def _read(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise EOFError
        return data

    def recv(self):
        """(opcode, payload) of the next data message; None on close or EOF."""
        parts = []
        while True:
            try:
                first, second = self._read(2)
                n = second & 0x7F
                if n == 126:
                    n = struct.unpack("!H", self._read(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", self._read(8))[0]
                if not second & 0x80:
                    raise ValueError("client frame not masked")
                key = self._read(4)
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(self._read(n))) if n < 4096 else \
                    (int.from_bytes(self._read(n), "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
            except (EOFError, OSError, ValueError):
                return None
            opcode = first & 0x0F
            if opcode == 0x8:
                try:
                    self.send(0x8, payload[:2])
                except OSError:
                    pass
                return None
            if opcode == 0x9:
                self.send(0xA, payload)
                continue
            if opcode == 0xA:
                self.pongs += 1
                continue
            parts.append(payload)
            if first & 0x80:
                return opcode if opcode else 0x2, b"".join(parts)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "slicer-api-strict-double/1"

    def log_message(self, fmt, *args):      # keep test output quiet
        pass

    @property
    def state(self) -> _State:
        return self.server.state

    # -- plumbing --------------------------------------------------------------
    def _json(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _authorized(self) -> bool:
        token = self.server.token
        if not token or self.headers.get("Authorization", "") == "Bearer " + token:
            return True
        self._error(401, "unauthorized")
        return False

    def _body(self) -> bytes:
        """The whole request body (chunked or sized), read before anything runs."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                line = self.rfile.readline()
                if not line:
                    break
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _route(self, method: str):
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        segments = [unquote(s) for s in parts.path.strip("/").split("/") if s]
        with self.state.lock:
            self.state.requests.append((method, parts.path, query))
        if not self._authorized():
            return
        n = len(segments)
        head = segments[0] if segments else ""
        tail = segments[2] if n > 2 else ""
        routes = {
            ("GET", 1, "hostgroup", ""): self.list_hostgroups,
            ("GET", 1, "nodes", ""): self.list_nodes,
            ("POST", 3, "hostgroup", "nodes"): self.create_node,
            ("DELETE", 4, "hostgroup", "nodes"): self.delete_node,
            ("POST", 3, "vm", "exec"): self.exec_vm,
            ("GET", 3, "vm", "exec"): self.exec_list,
            ("GET", 5, "vm", "exec"): self.exec_logs,
            ("POST", 5, "vm", "exec"): self.exec_kill,
            ("POST", 3, "vm", "cp"): self.cp_in,
            ("GET", 3, "vm", "cp"): self.cp_out,
            ("GET", 3, "vm", "forward"): self.forward,
            ("GET", 3, "vm", "shell"): self.shell,
        }
        handler = routes.get((method, n, head, tail))
        if handler is None:
            self._error(404, "no route for %s %s" % (method, parts.path))
            return
        if head == "vm":
            with self.state.lock:
                node = self.state.nodes.get(segments[1])
            if node is None:
                return self._error(404, "VM %s not found" % segments[1])
        handler(segments, query)

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_DELETE(self):
        self._route("DELETE")

    # -- host groups and nodes -----------------------------------------------------
    def list_hostgroups(self, segments, query):
        with self.state.lock:
            body = [{"name": g, "count": sum(1 for n in self.state.nodes.values() if n["hostgroup"] == g),
                     "ram_bytes": 2 << 30, "cpus": 2, "gpu_count": 0, "arch": "x86_64"}
                    for g in self.state.hostgroups]
        self._json(200, body)

    def list_nodes(self, segments, query):
        tags = query.get("tag", [])
        prefixes = query.get("tag_prefix", [])
        if tags and prefixes:
            return self._error(400, "only one of tag and tag_prefix may be set")
        with self.state.lock:
            nodes = [dict(n) for n in self.state.nodes.values()
                     if all(t in n["tags"] for t in tags)
                     and all(any(x.startswith(p) for x in n["tags"]) for p in prefixes)]
        self._json(200, nodes)

    def create_node(self, segments, query):
        group = segments[1]
        try:
            body = json.loads(self._body() or b"{}")
        except ValueError:
            return self._error(400, "malformed JSON body")
        if group not in self.state.hostgroups:
            return self._error(404, "host group %s not found" % group)
        tags = list(body.get("tags") or [])
        names = [t[5:] for t in tags if t.startswith("name=")]
        with self.state.lock:
            for name in names:
                if any("name=" + name in n["tags"] for n in self.state.nodes.values()):
                    return self._error(400, "a VM with tag name=%s already exists" % name)
            self.state.counter[group] += 1
            hostname = "%s-%d" % (group, self.state.counter[group])
            node = {"hostname": hostname, "hostgroup": group, "ip": "192.168.137.%d" % (self.state.counter[group] + 1),
                    "ram_bytes": body.get("ram_bytes") or 2 << 30, "cpus": body.get("cpus") or 2,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "arch": "x86_64",
                    "tags": tags, "status": "Running", "persistent": bool(body.get("persistent"))}
            if self.state.create_timeout:       # the VM is cleaned up before the error is returned
                return self._error(408, "timed out waiting for the agent of %s after %s"
                                   % (hostname, (query.get("timeout") or ["5m"])[0]))
            os.makedirs(self.state.home(hostname))
            self.state.nodes[hostname] = node
        self._json(self.state.create_status, {k: node[k] for k in ("hostname", "hostgroup", "ip", "created_at", "arch")})

    def delete_node(self, segments, query):
        group, hostname = segments[1], segments[3]
        with self.state.lock:
            node = self.state.nodes.get(hostname)
            if node is None or node["hostgroup"] != group:
                return self._error(404, "node %s not found in host group %s" % (hostname, group))
            if self.state.delete_error:
                return self._json(200, {"message": "", "disk_removed": "", "error": self.state.delete_error})
            del self.state.nodes[hostname]
            background = self.state.background.pop(hostname, {})
        for bg in background.values():
            _kill(bg.proc)
        shutil.rmtree(self.state.vm_dir(hostname), ignore_errors=True)
        self._json(200, {"message": "deleted %s" % hostname, "disk_removed": "true", "error": ""})

    # -- exec ------------------------------------------------------------------
    def _command(self, hostname: str, query):
        """(argv, cwd, env, uid) for an exec query, or an error already sent (None)."""
        cmd = (query.get("cmd") or [""])[0]
        if not cmd:
            self._error(400, "cmd is required")
            return None
        args = query.get("args", [])
        if "shell" not in query:        # the least convenient default: a login bash, joined
            argv = ["/bin/bash", "-lc", " ".join([cmd] + args)]
        elif query["shell"][0]:
            argv = [query["shell"][0], "-c", " ".join([cmd] + args)]
        else:
            argv = [cmd] + args
        home = self.state.home(hostname)
        env = {"HOME": home, "PATH": self.server.guest_path, "LANG": "C.UTF-8"}
        for item in query.get("env", []):
            key, _, value = item.partition("=")
            env[key] = value
        cwd = (query.get("cwd") or [""])[0] or home
        uid = (query.get("uid") or [None])[0]
        return argv, cwd, env, uid

    def exec_vm(self, segments, query):
        hostname = segments[1]
        background = (query.get("background") or ["false"])[0] == "true" and not self.state.no_background
        want_stdin = (query.get("stdin") or ["false"])[0] == "true"
        if background and want_stdin:
            return self._error(400, "background exec does not take stdin")
        body = self._body()                 # half duplex: all of it before the command starts
        command = self._command(hostname, query)
        if command is None:
            return
        argv, cwd, env, uid = command
        if background:
            return self._start_background(hostname, argv, cwd, env, uid)
        base64_out = (query.get("stdio") or ["text"])[0] == "base64" and not self.state.text_only
        legacy = self.state.legacy_frames
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        lock = threading.Lock()

        def emit(frame):
            data = json.dumps(frame).encode() + b"\n"
            with lock:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        def output(kind: str, data: bytes) -> dict:
            text = base64.b64encode(data).decode() if base64_out else data.decode("utf-8", "replace")
            frame = {kind: text} if legacy else {"type": kind, "data": text}
            if base64_out:
                frame["encoding"] = "base64"
            return frame

        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            emit({"error": "exec %s: %s" % (argv[0], exc.strerror), "exit_code": 127})
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True
            return
        if not legacy:
            emit({"type": "started", "pid": proc.pid})

        def feed():
            try:
                proc.stdin.write(body if want_stdin else b"")
            except OSError:
                pass
            try:
                proc.stdin.close()
            except OSError:
                pass
        threading.Thread(target=feed, daemon=True).start()

        def pump(fd, kind):
            while True:
                data = os.read(fd, 65536)
                if not data:
                    return
                emit(output(kind, data))

        errors = threading.Thread(target=pump, args=(proc.stderr.fileno(), "stderr"), daemon=True)
        errors.start()
        try:
            pump(proc.stdout.fileno(), "stdout")
            code = proc.wait()
            errors.join()
            emit({"stdout": "", "stderr": "", "exit_code": code} if legacy else {"type": "exit", "exit_code": code})
            with lock:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except OSError:         # the client went away: end the "VM" process too
            _kill(proc)
        self.close_connection = True

    def _start_background(self, hostname, argv, cwd, env, uid):
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return self._error(400, "exec %s: %s" % (argv[0], exc.strerror))
        with self.state.lock:
            self.state.exec_count += 1
            exec_id = "ex_%06d" % self.state.exec_count
            bg = _Background(exec_id, proc, argv, cwd, uid)
            self.state.background.setdefault(hostname, {})[exec_id] = bg
        threading.Thread(target=bg.pump, daemon=True).start()
        self._json(201, {"exec_id": exec_id, "pid": proc.pid, "started_at": bg.started_at, "ring_bytes": 1 << 20})

    def _background(self, hostname, exec_id):
        with self.state.lock:
            return self.state.background.get(hostname, {}).get(exec_id)

    def exec_list(self, segments, query):
        if self.state.no_background:
            return self._error(404, "no route for GET %s" % self.path)
        with self.state.lock:
            execs = list(self.state.background.get(segments[1], {}).values())
        self._json(200, [bg.info() for bg in execs])

    def exec_logs(self, segments, query):
        bg = self._background(segments[1], segments[3])
        if bg is None or segments[4] != "logs" or self.state.no_background:
            return self._error(404, "no such exec")
        follow = (query.get("follow") or ["false"])[0] == "true"
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        try:
            while True:
                with bg.cond:
                    while follow and sent == len(bg.frames) and not bg.done:
                        bg.cond.wait(1)
                    frames = bg.frames[sent:]
                    finished = bg.done or not follow
                for frame in frames:
                    data = json.dumps(frame).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                sent += len(frames)
                if finished and sent == len(bg.frames):
                    break
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass
        self.close_connection = True

    def exec_kill(self, segments, query):
        bg = self._background(segments[1], segments[3])
        if bg is None or segments[4] != "kill":
            return self._error(404, "no such exec")
        self._body()
        _kill(bg.proc)
        self._json(200, {"exec_id": bg.exec_id, "pid": bg.proc.pid, "running": False, "signal_sent": "SIGKILL"})

    # -- cp ----------------------------------------------------------------------
    def cp_in(self, segments, query):
        path = (query.get("path") or [""])[0]
        mode = (query.get("mode") or ["tar"])[0]
        data = self._body()
        if mode != "binary":
            return self._error(400, "the double only implements mode=binary")
        if not path.startswith("/") or not self.state.inside(segments[1], path):
            return self._error(400, "path %s is outside the double's VM" % path)
        if not os.path.isdir(os.path.dirname(path)):
            return self._error(400, "parent directory of %s does not exist" % path)
        permissions = int((query.get("permissions") or ["0644"])[0], 8)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, permissions)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(path, permissions)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def cp_out(self, segments, query):
        path = (query.get("path") or [""])[0]
        if (query.get("mode") or ["tar"])[0] != "binary":
            return self._error(400, "the double only implements mode=binary")
        if not path.startswith("/") or not self.state.inside(segments[1], path):
            return self._error(400, "path %s is outside the double's VM" % path)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            mode = os.stat(path).st_mode & 0o7777
        except OSError as exc:
            return self._error(404, "%s: %s" % (path, exc.strerror))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("X-Slicer-File-Mode", "%04o" % mode)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # -- WebSockets ---------------------------------------------------------------
    def _upgrade(self):
        key = self.headers.get("Sec-WebSocket-Key")
        if self.headers.get("Upgrade", "").lower() != "websocket" or not key \
                or self.headers.get("Sec-WebSocket-Version") != "13":
            self._error(400, "expected a WebSocket upgrade")
            return None
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", _accept_key(key))
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        return _ServerSocket(self.rfile, self.wfile)

    def forward(self, segments, query):
        hostname = segments[1]
        if self.state.no_forward:
            return self._error(404, "no route for GET %s" % self.path)
        if self.headers.get("X-Inlets-Mode") != "local":
            return self._error(400, "X-Inlets-Mode must be local")
        upstream = self.headers.get("X-Inlets-Upstream", "")
        if not upstream.startswith("unix:"):
            return self._error(400, "the double forwards only to unix: upstreams, got %r" % upstream)
        path = upstream[len("unix:"):]
        if not self.state.inside(hostname, path):
            return self._error(400, "upstream %s is outside the VM" % path)
        ws = self._upgrade()
        if ws is None:
            return
        ws.send(0x9, b"double-ping")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            ws.send(0x8, struct.pack("!H", 1011) + ("dial %s: %s" % (upstream, exc.strerror)).encode()[:100])
            return

        def down():
            try:
                while True:
                    data = sock.recv(1 << 20)
                    if not data:
                        break
                    ws.send(0x2, data)
                ws.send(0x8, struct.pack("!H", 1000))
            except OSError:
                pass
        relay = threading.Thread(target=down, daemon=True)
        relay.start()
        try:
            while True:
                message = ws.recv()
                if message is None:
                    break
                sock.sendall(message[1])
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        relay.join(30)
        sock.close()

    def shell(self, segments, query):
        hostname = segments[1]
        shell = (query.get("shell") or ["/bin/sh"])[0] or "/bin/sh"
        cwd = (query.get("cwd") or [""])[0] or self.state.home(hostname)
        if not os.path.isdir(cwd):
            return self._error(400, "cwd %s does not exist" % cwd)
        with self.state.lock:
            self.state.requests.append(("SHELL", hostname, {"uid": query.get("uid"), "cwd": [cwd]}))
        ws = self._upgrade()
        if ws is None:
            return
        master, slave = pty.openpty()
        env = {"HOME": self.state.home(hostname), "PATH": self.server.guest_path, "TERM": "dumb", "PS1": "$ "}
        proc = subprocess.Popen([shell], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                                start_new_session=True, close_fds=True)
        os.close(slave)

        def frame(kind: int, payload: bytes = b"") -> bytes:
            return struct.pack("!BI", kind, len(payload)) + payload

        def down():
            try:
                while True:
                    try:
                        data = os.read(master, 65536)
                    except OSError:
                        data = b""
                    if not data:
                        break
                    ws.send(0x2, frame(0x01, data))
                proc.wait()
                ws.send(0x2, frame(0x05))
                ws.send(0x8, struct.pack("!H", 1000))
            except OSError:
                pass
        relay = threading.Thread(target=down, daemon=True)
        relay.start()
        while True:
            message = ws.recv()
            if message is None or len(message[1]) < 5:
                break
            kind, length = struct.unpack("!BI", message[1][:5])
            payload = message[1][5:5 + length]
            if kind == 0x01:
                os.write(master, payload)
            elif kind == 0x02 and len(payload) == 8:
                cols, rows = struct.unpack("!II", payload)
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            elif kind in (0x03, 0x05):
                break
        if proc.poll() is None:
            _kill(proc)
        relay.join(10)
        os.close(master)


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        try:
            proc.kill()
        except OSError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)


class SlicerAPIStrictDouble:
    """Start with .start(); .url is what slicer.url / SLICER_URL takes; .stop() ends every
    "VM" process it started."""

    def __init__(self, root: str, unix_path: str = None, token: str = None, hostgroups=("agents",),
                 guest_path: str = "/usr/bin:/bin"):
        self.state = _State(root, hostgroups)
        if unix_path:
            self.server = _UnixServer(unix_path, _Handler)
            self.url = unix_path
        else:
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            self.server.daemon_threads = True
            self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.server.state = self.state
        self.server.token = token
        self.server.guest_path = guest_path
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def queries(self, method: str, path: str):
        """The query dicts of every request to `method path`."""
        with self.state.lock:
            return [q for m, p, q in self.state.requests if m == method and p == path]

    def background(self, hostname: str):
        with self.state.lock:
            return list(self.state.background.get(hostname, {}).values())

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        with self.state.lock:
            every = [bg for execs in self.state.background.values() for bg in execs.values()]
        for bg in every:
            _kill(bg.proc)
