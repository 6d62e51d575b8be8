"""VMs from a Slicer daemon, through its REST API (see /research/slicer.md for the shapes).

    slicer.url / SLICER_URL         a unix socket path (no token) or http://127.0.0.1:8080
    SLICER_TOKEN / slicer.tokenFile (SLICER_TOKEN_FILE)   bearer token for TCP
    slicer.hostgroup                where VMs are launched (default: the first host group)

Launch is POST /hostgroup/{g}/nodes (tagged with repo, branch and worktree), list GET /nodes,
remove DELETE /hostgroup/{g}/nodes/{h}, and both `exec` and the agent go through
POST /vm/{h}/exec with stdin: the request body streams in (chunked) while NDJSON frames stream
out, so the agent (shipped over that same channel) speaks protocol v1 through it.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import sys
import threading
from urllib.parse import quote, urlencode, urlsplit

from .. import transport
from ..errors import AgentFailed, SlicerError, UsageError, VMNotFound
from ..links import check_vm_name
from . import VM, new_vm_id

DEFAULT_TOKEN_FILE = "/var/lib/slicer/auth/token"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout=None):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def is_unix_url(url: str) -> bool:
    return url.startswith(("/", "./", "../", "~/", "unix://")) or url.endswith(".sock")


class SlicerAPI:
    def __init__(self, url: str, token: str = None, timeout: float = 30):
        if not url:
            raise UsageError("the slicer provider needs the API's address",
                             hint="git config slicer.url /path/to/slicer.sock (or http://127.0.0.1:8080), or set SLICER_URL")
        self.url = url
        self.timeout = timeout
        self.token = token
        if is_unix_url(url):
            self.unix_path = os.path.expanduser(url[len("unix://"):] if url.startswith("unix://") else url)
            self.base = ""
        else:
            parts = urlsplit(url if "://" in url else "http://" + url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UsageError("bad slicer.url %r (a unix socket path or http://HOST:PORT)" % url)
            self.unix_path = None
            self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
            self.base = parts.path.rstrip("/")

    def connection(self, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        if self.unix_path:
            return _UnixHTTPConnection(self.unix_path, timeout=timeout)
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)

    def headers(self) -> dict:
        headers = {"Accept": "application/json", "User-Agent": "git-slicer"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        return headers

    def path(self, path: str, query=None) -> str:
        return self.base + path + ("?" + urlencode(query, doseq=True) if query else "")

    def unreachable(self, exc) -> SlicerError:
        why = transport._why(exc)
        return SlicerError("cannot reach the Slicer API at %s: %s" % (self.url, why),
                           hint="is the Slicer daemon running? (slicer.url / SLICER_URL)")

    def check(self, status: int, method: str, path: str, body: bytes):
        if status < 400:
            return
        try:
            message = json.loads(body).get("error") or ""
        except (ValueError, AttributeError):
            message = body.decode("utf-8", "replace").strip()[:300]
        if status in (401, 403):
            raise SlicerError("the Slicer API refused the request (HTTP %d, authentication failed)%s"
                              % (status, ": " + message if message else ""),
                              hint="set SLICER_TOKEN or SLICER_TOKEN_FILE (slicer.tokenFile)")
        if status == 408:
            raise SlicerError("the Slicer API timed out: %s %s%s" % (method, path.split("?")[0],
                                                                    ": " + message if message else ""))
        raise SlicerError("the Slicer API failed: %s %s: HTTP %d%s" % (method, path.split("?")[0], status,
                                                                      ": " + message if message else ""))

    def request(self, method: str, path: str, query=None, body=None, timeout=None):
        conn = self.connection(timeout)
        full = self.path(path, query)
        headers = self.headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, full, body=data, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except socket.timeout:
            raise SlicerError("the Slicer API at %s did not answer %s %s in time" % (self.url, method, path)) from None
        except OSError as exc:
            raise self.unreachable(exc) from None
        finally:
            conn.close()
        self.check(response.status, method, full, payload)
        if not payload.strip():
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise SlicerError("the Slicer API answered %s %s with something that is not JSON" % (method, path)) from None


class _ChunkedWriter:
    """The exec request's body: each flush is one HTTP chunk."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.lock = threading.Lock()

    def write(self, data) -> int:
        self.buf += data
        return len(data)

    def flush(self) -> None:
        with self.lock:
            if self.buf:
                data, self.buf = bytes(self.buf), bytearray()
                self.sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")

    def finish(self) -> None:
        self.flush()
        with self.lock:
            self.sock.sendall(b"0\r\n\r\n")


class ExecStream:
    """One POST /vm/{h}/exec with stdin: a full-duplex byte stream to a guest process."""

    def __init__(self, api: SlicerAPI, hostname: str, argv, handshake_timeout: float = None, env=None):
        self.api = api
        self.hostname = hostname
        self.http = api.connection(timeout=handshake_timeout)
        query = [("cmd", argv[0])] + [("args", a) for a in argv[1:]] + \
            [("stdin", "true"), ("stdio", "base64")] + [("env", e) for e in (env or [])]
        self.target = api.path("/vm/%s/exec" % quote(hostname, safe=""), query)
        try:
            self.http.putrequest("POST", self.target, skip_accept_encoding=True)
            for key, value in api.headers().items():
                self.http.putheader(key, value)
            self.http.putheader("Content-Type", "application/octet-stream")
            self.http.putheader("Transfer-Encoding", "chunked")
            self.http.endheaders()
        except socket.timeout:
            raise SlicerError("timed out connecting to the Slicer API at %s" % api.url) from None
        except OSError as exc:
            raise api.unreachable(exc) from None
        self.sock = self.http.sock
        self.writer = _ChunkedWriter(self.sock)
        self.response = None
        self.pending = b""
        self.eof = False
        self.exit_code = None
        self.error = ""
        self.stderr = bytearray()
        self.on_stderr = None

    def _start(self) -> None:
        self.response = self.http.getresponse()
        if self.response.status >= 400:
            body = self.response.read()
            self.eof = True
            try:
                self.api.check(self.response.status, "POST", self.target, body)
            except SlicerError as exc:
                self.error = str(exc)

    def next_frame(self):
        """The next NDJSON frame, or None at the end."""
        if self.response is None:
            self._start()
        if self.eof:
            return None
        line = self.response.readline()
        if not line:
            self.eof = True
            return None
        try:
            frame = json.loads(line)
        except ValueError:
            raise OSError("the Slicer API sent a malformed exec frame") from None
        data = frame.get("data") or ""
        if isinstance(data, str) and data and frame.get("encoding") == "base64":
            data = base64.b64decode(data)
        elif isinstance(data, str):
            data = data.encode("utf-8")
        frame["bytes"] = data
        kind = frame.get("type")
        if kind == "stderr":
            self.stderr += data
            del self.stderr[:-65536]
            if self.on_stderr:
                self.on_stderr(data)
        elif kind == "exit":
            self.exit_code = frame.get("exit_code")
            self.error = frame.get("error") or self.error
            self.eof = True
        return frame

    def readinto(self, view) -> int:
        while not self.pending:
            frame = self.next_frame()
            if frame is None:
                return 0
            if frame.get("type") == "stdout":
                self.pending = frame["bytes"]
        n = min(len(view), len(self.pending))
        view[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def close_stdin(self) -> None:
        try:
            self.writer.finish()
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.http.close()


class ExecChannel:
    """The agent through the Slicer exec API: the agent is shipped over the same stream."""

    def __init__(self, api: SlicerAPI, hostname: str, description: str, handshake_timeout: float):
        self.description = description
        self.shipped = True
        self.timed_out = False
        self.handshake_timeout = handshake_timeout
        self.stream = ExecStream(api, hostname, ["sh", "-c", transport.AGENT_SCRIPT, "sh"],
                                 handshake_timeout=handshake_timeout)
        from ..wire.framing import Connection
        self.conn = Connection(self.stream, self.stream.writer)
        self.stream.writer.write(transport.bundle_preamble())

    def handshake_done(self) -> None:
        self.stream.sock.settimeout(None)

    def abort(self) -> None:
        self.stream.close()

    def stderr_tail(self, limit: int = 2000) -> str:
        return bytes(self.stream.stderr).decode("utf-8", "replace").strip()[-limit:]

    def diagnose(self):
        try:
            while self.stream.next_frame() is not None:     # the rest: stderr and the exit code
                pass
        except socket.timeout:
            return "timed out after %gs waiting for the agent (%s)" % (self.handshake_timeout, self.description)
        except (OSError, http.client.HTTPException):
            pass
        for line in self.stderr_tail(8000).splitlines():
            if line.startswith("git-slicer: "):
                return line[len("git-slicer: "):].strip()
        if self.stream.error:
            return self.stream.error
        if self.stream.exit_code not in (None, 0):
            tail = self.stderr_tail().splitlines()
            return "the agent exited with status %s%s" % (self.stream.exit_code, (": " + tail[-1]) if tail else "")
        return None

    def close(self, timeout: float = 10) -> None:
        self.stream.close_stdin()
        try:
            self.stream.sock.settimeout(timeout)
            while self.stream.next_frame() is not None:
                pass
        except (OSError, http.client.HTTPException):
            pass
        self.stream.close()


def _tags(node) -> dict:
    tags = {}
    for tag in node.get("tags") or []:
        key, _, value = str(tag).partition("=")
        tags[key] = value
    return tags


class SlicerProvider:
    name = "slicer"

    def __init__(self, settings):
        self.settings = settings
        url = settings.get("slicer.url")
        token = os.environ.get("SLICER_TOKEN", "").strip() or None
        if token is None and url and not is_unix_url(url):
            path = settings.get("slicer.tokenFile") or (DEFAULT_TOKEN_FILE if os.path.exists(DEFAULT_TOKEN_FILE) else "")
            if path:
                try:
                    with open(path, encoding="utf-8") as fh:
                        token = fh.read().strip() or None
                except OSError as exc:
                    raise UsageError("cannot read the Slicer token file %s: %s" % (path, exc.strerror)) from None
        self.api = SlicerAPI(url, token, timeout=max(30, settings.get("slicer.connectTimeout")))

    # -- VM records ----------------------------------------------------------
    def _vm(self, node) -> VM:
        tags = _tags(node)
        name = tags.get("name") or node["hostname"]
        return VM(name=name, provider=self.name, address="slicer:" + node["hostname"],
                  created_at=node.get("created_at", ""), state=node.get("status") or "running",
                  id=tags.get("git-slicer-id", ""),
                  details={"hostname": node["hostname"], "hostgroup": node.get("hostgroup", ""),
                           "ip": node.get("ip", ""), "arch": node.get("arch", ""), "tags": tags})

    def _nodes(self):
        nodes = self.api.request("GET", "/nodes") or []
        if not isinstance(nodes, list):
            raise SlicerError("the Slicer API answered GET /nodes with something that is not a list")
        return [n for n in nodes if isinstance(n, dict) and n.get("hostname")]

    def _node(self, name: str):
        check_vm_name(name)
        nodes = self._nodes()
        for node in nodes:
            if node["hostname"] == name:
                return node
        for node in nodes:
            if _tags(node).get("name") == name:
                return node
        raise VMNotFound("no Slicer VM named %s" % name, hint="see `git slicer vm list --provider slicer`")

    def get(self, name: str) -> VM:
        return self._vm(self._node(name))

    def list(self):
        return [self._vm(n) for n in self._nodes()]

    def _hostgroup(self) -> str:
        group = self.settings.get("slicer.hostgroup")
        if group:
            return group
        groups = self.api.request("GET", "/hostgroup") or []
        if not groups:
            raise SlicerError("the Slicer daemon has no host groups", hint="set slicer.hostgroup")
        return groups[0]["name"]

    def launch(self, name: str = None, tags=None, avoid=()) -> VM:
        if name:
            check_vm_name(name)
            if any(n["hostname"] == name or _tags(n).get("name") == name for n in self._nodes()):
                raise UsageError("a VM named %s already exists" % name)
        group = self._hostgroup()
        tag_list = ["%s=%s" % (k, v) for k, v in sorted((tags or {}).items())]
        if name:
            tag_list.append("name=" + name)
        tag_list.append("git-slicer=1")
        tag_list.append("git-slicer-id=" + new_vm_id())     # the VM's identity, as links know it
        created = self.api.request("POST", "/hostgroup/%s/nodes" % quote(group, safe=""),
                                   query={"wait": "agent", "timeout": "120s"},
                                   body={"persistent": True, "tags": tag_list}, timeout=180)
        if not isinstance(created, dict) or not created.get("hostname"):
            raise SlicerError("the Slicer API did not say which VM it launched")
        created.setdefault("tags", tag_list)
        created.setdefault("hostgroup", group)
        return self._vm(created)

    def remove(self, name: str) -> None:
        node = self._node(name)
        self.api.request("DELETE", "/hostgroup/%s/nodes/%s" % (quote(node.get("hostgroup") or self._hostgroup(), safe=""),
                                                              quote(node["hostname"], safe="")))

    # -- running things inside -------------------------------------------------
    def _hostname(self, vm: VM) -> str:
        return vm.details.get("hostname") or vm.address.partition(":")[2] or vm.name

    def connect(self, vm: VM):
        return ExecChannel(self.api, self._hostname(vm), "the agent of VM %s (Slicer exec)" % vm.name,
                           handshake_timeout=self.settings.get("slicer.connectTimeout")
                           + self.settings.get("slicer.handshakeTimeout"))

    def exec(self, vm: VM, argv, cwd: str = "", interactive: bool = False) -> int:
        stream = ExecStream(self.api, self._hostname(vm), ["sh", "-c", transport.EXEC_SCRIPT, "sh", cwd or ""] + list(argv))
        out = sys.stdout.buffer
        err = sys.stderr.buffer

        def feed():
            try:
                if not interactive:
                    while True:
                        block = os.read(sys.stdin.fileno(), 65536)
                        if not block:
                            break
                        stream.writer.write(block)
                        stream.writer.flush()
            except (OSError, ValueError):
                pass
            stream.close_stdin()
        threading.Thread(target=feed, daemon=True).start()
        stream.on_stderr = lambda data: (err.write(data), err.flush())
        try:
            while True:
                frame = stream.next_frame()
                if frame is None:
                    break
                if frame.get("type") == "stdout":
                    out.write(frame["bytes"])
                    out.flush()
        except (OSError, http.client.HTTPException) as exc:
            raise AgentFailed("lost the exec stream of VM %s: %s" % (vm.name, transport._why(exc))) from None
        finally:
            stream.close()
        if stream.exit_code is None:
            raise AgentFailed("VM %s: %s" % (vm.name, stream.error or "the exec stream ended without an exit code"))
        return int(stream.exit_code)
