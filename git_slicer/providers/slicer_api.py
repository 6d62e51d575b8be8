"""The Slicer daemon's REST API, used only as published (OpenAPI file, Go SDK; docs/transports.md):
JSON requests, exec as a half-duplex request (all of stdin, then NDJSON frames of either shape),
binary `cp`, and WebSocket upgrades for `/forward` and `/shell`.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import os
import socket
from urllib.parse import quote, urlencode, urlsplit

from .. import wsclient
from ..errors import SlicerError, UsageError
from ..transport import why


class APIError(SlicerError):
    """The API answered with an error status (kept in .status)."""

    def __init__(self, message: str, status: int, *, hint: str = ""):
        super().__init__(message, hint=hint)
        self.status = status


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout=None):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def is_unix_url(url: str) -> bool:
    return url.startswith(("/", "./", "../", "~/", "unix://")) or url.endswith(".sock")


def vm_path(hostname: str, *rest: str) -> str:
    return "/vm/" + "/".join(quote(p, safe="") for p in (hostname,) + rest)


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
            self.host_header = "localhost"
        else:
            parts = urlsplit(url if "://" in url else "http://" + url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise UsageError("bad slicer.url %r (a unix socket path or http://HOST:PORT)" % url)
            self.unix_path = None
            self.scheme, self.host, self.port = parts.scheme, parts.hostname, parts.port
            self.base = parts.path.rstrip("/")
            self.host_header = parts.netloc

    # -- plumbing --------------------------------------------------------------
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
        return SlicerError("cannot reach the Slicer API at %s: %s" % (self.url, why(exc)),
                           hint="is the Slicer daemon running? (slicer.url / SLICER_URL)")

    @staticmethod
    def error_message(body: bytes) -> str:
        try:
            return str(json.loads(body).get("error") or "")
        except (ValueError, AttributeError):
            return body.decode("utf-8", "replace").strip()[:300]

    def check(self, status: int, method: str, path: str, body: bytes):
        if status < 400:
            return
        message = self.error_message(body)
        where = "%s %s" % (method, path.split("?")[0])
        if status in (401, 403) and not message.startswith("protected"):
            raise APIError("the Slicer API refused the request (HTTP %d, authentication failed)%s"
                           % (status, ": " + message if message else ""), status,
                           hint="set SLICER_TOKEN or SLICER_TOKEN_FILE (slicer.tokenFile)")
        raise APIError("the Slicer API failed: %s: HTTP %d%s" % (where, status, ": " + message if message else ""),
                       status)

    def send(self, method: str, path: str, query=None, body: bytes = None, content_type: str = "",
             timeout=None):
        """(status, headers, body bytes) of one request; connection problems become one line."""
        conn = self.connection(timeout)
        full = self.path(path, query)
        headers = self.headers()
        if body is not None:
            headers["Content-Type"] = content_type or "application/octet-stream"
        try:
            conn.request(method, full, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        except socket.timeout:
            raise SlicerError("the Slicer API at %s did not answer %s %s in time" % (self.url, method, path)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self.unreachable(exc) from None
        finally:
            conn.close()
        return response.status, response, payload

    def request(self, method: str, path: str, query=None, body=None, timeout=None):
        """A JSON request; the decoded JSON answer (None when empty)."""
        data = json.dumps(body).encode() if body is not None else None
        status, _, payload = self.send(method, path, query, data, "application/json", timeout)
        self.check(status, method, path, payload)
        if not payload.strip():
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise SlicerError("the Slicer API answered %s %s with something that is not JSON" % (method, path)) from None

    # -- streams ---------------------------------------------------------------
    def open_stream(self, method: str, path: str, query=None, body: bytes = None, timeout=None):
        """(connection, response) for a streamed answer (NDJSON); errors raised as APIError."""
        conn = self.connection(timeout)
        full = self.path(path, query)
        headers = self.headers()
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        try:
            conn.request(method, full, body=body, headers=headers)
            response = conn.getresponse()
        except socket.timeout:
            conn.close()
            raise SlicerError("the Slicer API at %s did not answer %s %s in time" % (self.url, method, path)) from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self.unreachable(exc) from None
        if response.status >= 400:
            try:
                payload = response.read()
            except (OSError, http.client.HTTPException):
                payload = b""
            conn.close()
            self.check(response.status, method, full, payload)
        return conn, response

    def websocket(self, path: str, query=None, headers=None, timeout: float = 10) -> "wsclient.WebSocket":
        """A WebSocket to `path` (the socket keeps `timeout` until the caller changes it)."""
        conn = self.connection(timeout)
        try:
            conn.connect()
        except socket.timeout:
            conn.close()
            raise SlicerError("timed out after %gs connecting to the Slicer API at %s" % (timeout, self.url)) from None
        except OSError as exc:
            conn.close()
            raise self.unreachable(exc) from None
        sock = conn.sock
        every = self.headers()
        every.update(headers or {})
        every.pop("Accept", None)
        try:
            return wsclient.connect(sock, self.host_header, self.path(path, query), every)
        except wsclient.HandshakeRefused as exc:
            sock.close()
            self.check(exc.status, "GET", path, json.dumps({"error": exc.message}).encode())
            raise APIError("the Slicer API refused the WebSocket at %s: %s" % (path, exc), exc.status) from None
        except socket.timeout:
            sock.close()
            raise SlicerError("the Slicer API did not answer the WebSocket handshake at %s in %gs" % (path, timeout)) from None
        except OSError as exc:
            sock.close()
            raise SlicerError("WebSocket handshake with the Slicer API at %s failed: %s" % (path, why(exc))) from None


# -- exec ----------------------------------------------------------------------
class ExecOutput:
    """Reads exec NDJSON frames of both documented shapes: typed ({type: started|stdout|stderr|exit,
    data, encoding, exit_code, error}) and legacy untyped ({stdout, stderr, exit_code}); a start
    failure is {error, exit_code} with no type."""

    def __init__(self, what: str, base64_asked: bool):
        self.what = what                    # "VM x" for messages
        self.base64_asked = base64_asked
        self.exit_code = None
        self.legacy_code = None             # legacy frames: the last exit_code seen counts at the end
        self.started = False
        self.output_seen = False

    def _bytes(self, frame: dict, value) -> bytes:
        if not isinstance(value, str):
            raise SlicerError("%s: the Slicer API sent an exec frame with non-text data" % self.what)
        if frame.get("encoding") == "base64":
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise SlicerError("%s: the Slicer API sent exec output that is not valid base64" % self.what) from None
        if self.base64_asked and value:
            raise SlicerError("%s: the VM's Slicer agent sent text output although base64 was asked for "
                              "(stdio=base64): binary output would be corrupted" % self.what,
                              hint="update the Slicer agent in the VM image")
        return value.encode("utf-8")

    def feed(self, line: bytes):
        """[(stream, bytes)] from one NDJSON line; sets exit_code on the exit frame."""
        if not line.strip():
            return []
        try:
            frame = json.loads(line)
        except ValueError:
            raise SlicerError("%s: the Slicer API sent an exec frame that is not JSON" % self.what) from None
        if not isinstance(frame, dict):
            raise SlicerError("%s: the Slicer API sent an exec frame that is not an object" % self.what)
        kind = frame.get("type")
        if kind == "started":
            self.started = True
            return []
        if kind in ("stdout", "stderr"):
            data = self._bytes(frame, frame.get("data") or "")
            self.output_seen = self.output_seen or bool(data)
            return [(kind, data)] if data else []
        if kind == "exit":
            if frame.get("error") and frame.get("exit_code") in (None, 0):
                raise SlicerError("%s: the command failed: %s" % (self.what, frame["error"]))
            self.exit_code = int(frame.get("exit_code") or 0)
            return []
        if kind:
            return []                       # a frame type this client does not know: skip it
        out = []
        for stream in ("stdout", "stderr"):
            if frame.get(stream):
                out.append((stream, self._bytes(frame, frame[stream])))
        if out:
            self.output_seen = True
        if frame.get("error") and not out and not self.started and not self.output_seen:
            raise SlicerError("%s: the command could not start: %s" % (self.what, frame["error"]))
        if "exit_code" in frame and frame["exit_code"] is not None:
            self.legacy_code = int(frame["exit_code"])
        return out

    def finish(self) -> int:
        if self.exit_code is not None:
            return self.exit_code
        if self.legacy_code is not None:
            return self.legacy_code
        raise SlicerError("%s: the exec stream ended without an exit code" % self.what)


def exec_query(argv, uid: int, gid: int, stdin: bool, cwd: str = "", background: bool = False) -> list:
    """The documented exec query: cmd/args, pinned uid/gid, no shell (an explicit empty `shell`), and
    base64 stdio so any byte survives."""
    query = [("cmd", argv[0])] + [("args", a) for a in argv[1:]] + \
        [("uid", str(uid)), ("gid", str(gid)), ("shell", ""), ("stdio", "base64")]
    if stdin:
        query.append(("stdin", "true"))
    if cwd:
        query.append(("cwd", cwd))
    if background:
        query.append(("background", "true"))
    return query


def run(api: SlicerAPI, hostname: str, what: str, argv, uid: int, gid: int, stdin: bytes = None,
        on_output=None, timeout=None) -> int:
    """Run argv in the VM: all of stdin first, then the output frames. `on_output(stream, data)`."""
    query = exec_query(argv, uid, gid, stdin is not None)
    conn, response = api.open_stream("POST", vm_path(hostname, "exec"), query, stdin if stdin is not None else b"",
                                     timeout=timeout)
    reader = ExecOutput(what, base64_asked=True)
    try:
        if timeout is None and conn.sock is not None:
            conn.sock.settimeout(None)      # a command may run for as long as it likes
        while True:
            line = response.readline()
            if not line:
                break
            for stream, data in reader.feed(line):
                if on_output:
                    on_output(stream, data)
            if reader.exit_code is not None:
                break
    except socket.timeout:
        raise SlicerError("%s: the command did not finish within %gs" % (what, timeout)) from None
    except (OSError, http.client.HTTPException) as exc:
        raise SlicerError("%s: lost the exec stream: %s" % (what, why(exc))) from None
    finally:
        conn.close()
    return reader.finish()
