"""A contract double of the Slicer daemon's REST API, built from its published shapes
(/research/slicer.md: slicervm/docs, the Go SDK). NOT the real daemon: its "VMs" are directories
whose commands run as plain local processes with HOME set to the VM's home directory and a PATH
of /usr/bin:/bin (so git_slicer is not importable there: an agentless guest).

A real HTTP/1.1 server on a unix socket (no token, like the daemon's socket) or on 127.0.0.1
(bearer token required). Routes:
  GET    /hostgroup                    -> [{name, count, ram_bytes, cpus, gpu_count, arch}]
  GET    /nodes?tag=&tag_prefix=       -> [{hostname, hostgroup, ip, ram_bytes, cpus, created_at, arch, tags, status, persistent}]
  POST   /hostgroup/{g}/nodes          body {cpus, ram_bytes, persistent, tags[], ...} -> {hostname, hostgroup, ip, created_at, arch}
  DELETE /hostgroup/{g}/nodes/{h}
  GET    /vm/{h}
  POST   /vm/{h}/exec?cmd=&args=&env=&cwd=&stdin=true&stdio=text|base64
         request body = stdin (streamed, chunked or not); response = NDJSON frames
         {type: started|stdout|stderr|exit, data, encoding, exit_code, error}, streamed as they happen
Errors are {"error": "..."} with a 4xx status.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socketserver
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


class _State:
    def __init__(self, root: str, hostgroups=("agents",)):
        self.root = root
        self.lock = threading.Lock()
        self.hostgroups = list(hostgroups)
        self.nodes = {}
        self.counter = {g: 0 for g in hostgroups}
        self.requests = []          # (method, path) log, for contract assertions

    def home(self, hostname: str) -> str:
        return os.path.join(self.root, hostname, "home")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "slicer-api-double/1"

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
        if not token:
            return True
        if self.headers.get("Authorization", "") == "Bearer " + token:
            return True
        self._error(401, "unauthorized")
        return False

    def _body_chunks(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return
                data = self.rfile.read(size)
                self.rfile.readline()
                yield data
        else:
            length = int(self.headers.get("Content-Length") or 0)
            while length > 0:
                data = self.rfile.read(min(length, 65536))
                if not data:
                    return
                length -= len(data)
                yield data

    def _read_json(self):
        data = b"".join(self._body_chunks())
        return json.loads(data) if data.strip() else {}

    def _route(self, method: str):
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        segments = [unquote(s) for s in parts.path.strip("/").split("/") if s]
        with self.state.lock:
            self.state.requests.append((method, parts.path))
        if not self._authorized():
            return
        handler = {
            ("GET", 1, "hostgroup"): self.list_hostgroups,
            ("GET", 1, "nodes"): self.list_nodes,
            ("POST", 3, "hostgroup"): self.create_node,
            ("DELETE", 4, "hostgroup"): self.delete_node,
            ("GET", 2, "vm"): self.get_vm,
            ("POST", 3, "vm"): self.exec_vm,
        }.get((method, len(segments), segments[0] if segments else ""))
        if handler is None:
            self._error(404, "no route for %s %s" % (method, parts.path))
            return
        handler(segments, query)

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_DELETE(self):
        self._route("DELETE")

    # -- routes ----------------------------------------------------------------
    def list_hostgroups(self, segments, query):
        with self.state.lock:
            body = [{"name": g, "count": sum(1 for n in self.state.nodes.values() if n["hostgroup"] == g),
                     "ram_bytes": 2 << 30, "cpus": 2, "gpu_count": 0, "arch": "x86_64"}
                    for g in self.state.hostgroups]
        self._json(200, body)

    def list_nodes(self, segments, query):
        tags = query.get("tag", [])
        prefixes = query.get("tag_prefix", [])
        with self.state.lock:
            nodes = [dict(n) for n in self.state.nodes.values()
                     if all(t in n["tags"] for t in tags)
                     and all(any(x.startswith(p) for x in n["tags"]) for p in prefixes)]
        self._json(200, nodes)

    def create_node(self, segments, query):
        group = segments[1]
        if segments[2] != "nodes":
            return self._error(404, "no such route")
        try:
            body = self._read_json()
        except ValueError:
            return self._error(400, "malformed JSON body")
        if group not in self.state.hostgroups:
            return self._error(404, "host group %s not found" % group)
        with self.state.lock:
            self.state.counter[group] += 1
            hostname = "%s-%d" % (group, self.state.counter[group])
            node = {"hostname": hostname, "hostgroup": group, "ip": "192.168.137.%d" % (self.state.counter[group] + 1),
                    "ram_bytes": body.get("ram_bytes") or 2 << 30, "cpus": body.get("cpus") or 2,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "arch": "x86_64",
                    "tags": list(body.get("tags") or []), "status": "Running",
                    "persistent": bool(body.get("persistent"))}
            os.makedirs(self.state.home(hostname))
            self.state.nodes[hostname] = node
        self._json(200, {k: node[k] for k in ("hostname", "hostgroup", "ip", "created_at", "arch")})

    def delete_node(self, segments, query):
        group, hostname = segments[1], segments[3]
        with self.state.lock:
            node = self.state.nodes.get(hostname)
            if node is None or node["hostgroup"] != group or segments[2] != "nodes":
                return self._error(404, "node %s not found in host group %s" % (hostname, group))
            del self.state.nodes[hostname]
        shutil.rmtree(os.path.join(self.state.root, hostname), ignore_errors=True)
        self._json(200, {})

    def get_vm(self, segments, query):
        with self.state.lock:
            node = self.state.nodes.get(segments[1])
        if node is None:
            return self._error(404, "VM %s not found" % segments[1])
        self._json(200, node)

    def exec_vm(self, segments, query):
        hostname = segments[1]
        if segments[2] != "exec":
            return self._error(404, "no such route")
        with self.state.lock:
            node = self.state.nodes.get(hostname)
        if node is None:
            return self._error(404, "VM %s not found" % hostname)
        cmd = (query.get("cmd") or [""])[0]
        if not cmd:
            return self._error(400, "cmd is required")
        argv = [cmd] + query.get("args", [])
        encoding = (query.get("stdio") or ["text"])[0]
        home = self.state.home(hostname)
        env = {"HOME": home, "PATH": self.server.guest_path, "LANG": "C.UTF-8", "USER": "root"}
        for item in query.get("env", []):
            key, _, value = item.partition("=")
            env[key] = value
        cwd = (query.get("cwd") or [""])[0] or home
        want_stdin = (query.get("stdin") or ["false"])[0] == "true"
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

        def payload(data: bytes) -> dict:
            if encoding == "base64":
                return {"data": base64.b64encode(data).decode(), "encoding": "base64"}
            return {"data": data.decode("utf-8", "replace"), "encoding": "text"}

        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE if want_stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            emit({"type": "exit", "exit_code": 127, "error": "exec %s: %s" % (cmd, exc.strerror)})
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True
            return
        emit({"type": "started", "pid": proc.pid})

        def pump_stdin():
            try:
                for chunk in self._body_chunks():
                    proc.stdin.write(chunk)
                    proc.stdin.flush()
            except (OSError, ValueError):
                pass
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

        def pump(fd, kind):
            while True:
                data = os.read(fd, 65536)
                if not data:
                    return
                emit({"type": kind, **payload(data)})

        if want_stdin:
            threading.Thread(target=pump_stdin, daemon=True).start()
        errors = threading.Thread(target=pump, args=(proc.stderr.fileno(), "stderr"), daemon=True)
        errors.start()
        try:
            pump(proc.stdout.fileno(), "stdout")
            code = proc.wait()
            errors.join()
            emit({"type": "exit", "exit_code": code})
            with lock:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except OSError:         # the client went away: end the "VM" process too
            proc.kill()
            proc.wait()
        self.close_connection = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)


class SlicerAPIDouble:
    """Start with .start(); .url is what slicer.url / SLICER_URL takes."""

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

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
