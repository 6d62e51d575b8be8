"""VMs from a Slicer daemon, through its published REST API only (docs/transports.md lists each
endpoint and why).

    slicer.url / SLICER_URL         a unix socket path (no token) or http://127.0.0.1:8080
    SLICER_TOKEN / slicer.tokenFile (SLICER_TOKEN_FILE)   bearer token for TCP
    slicer.hostgroup                where VMs are launched (needed when the daemon has several)
    slicer.uid / slicer.gid         who runs commands and the agent in the VM

The agent needs a full-duplex byte stream, which exec does not promise. So it is shipped with `cp`
(a zip), started with a background exec listening on a unix socket in a private directory (0700)
with a random token (also shipped with `cp`), and each session reaches it through the `/forward`
WebSocket. A running agent is found again with the exec list. `exec` sends all of stdin first.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import socket
import sys
import zipfile

from .. import transport, wsclient
from ..errors import AgentFailed, SlicerError, UsageError, VMNotFound
from ..links import check_vm_name
from ..transport import why
from ..wire.framing import Connection, ProtocolError, RemoteError
from . import VM, AlwaysRunning, NoEgress, new_vm_id
from .slicer_api import APIError, ExecOutput, SlicerAPI, exec_query, is_unix_url, run, vm_path
from .slicer_shell import ShellSession

DEFAULT_TOKEN_FILE = "/var/lib/slicer/auth/token"
LAUNCH_WAIT = 120                   # seconds the daemon may wait for a new VM's agent
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
RESERVED_TAGS = ("name", "git-slicer", "git-slicer-id")

# `~` and HOME: the exec API does not say which HOME a pinned uid gets; take the user's own.
_HOME = 'if [ -z "$HOME" ] || [ ! -O "$HOME" ]; then HOME=$(getent passwd "$(id -u)" | cut -d: -f6); export HOME; fi\n'
EXEC_SCRIPT = _HOME + transport.EXEC_SCRIPT
_NEEDS = "the agent needs python3 >= 3.9 and git on PATH"
# Makes the agent's private directory and says whether this agent version is already there.
PREPARE_SCRIPT = _HOME + (
    'command -v python3 >/dev/null 2>&1 || { echo "git-slicer: the VM has no python3 (%s)" >&2; exit 127; }\n'
    'command -v git >/dev/null 2>&1 || { echo "git-slicer: the VM has no git (%s)" >&2; exit 127; }\n'
    'python3 -c "import sys; sys.exit(sys.version_info < (3, 9))" || '
    '{ echo "git-slicer: the VM\'s python3 is older than 3.9" >&2; exit 127; }\n'
    'd="$HOME/.git-slicer"; umask 077\n'
    'mkdir -p "$d" && chmod 700 "$d" && [ -O "$d" ] || { echo "git-slicer: cannot make a private $d" >&2; exit 1; }\n'
    'printf "%%s\\n" "$d"; if [ -f "$d/$1" ]; then echo have; else echo need; fi\n' % (_NEEDS, _NEEDS))
_MAIN = b'''import sys
for m in [m for m in sys.modules if m == "git_slicer" or m.startswith("git_slicer.")]:
    del sys.modules[m]
from git_slicer.agent.entry import main
sys.exit(main(sys.argv[1:]))
'''
_zip_cache = []


def agent_zip():
    """(name, bytes) of the agent as a runnable zip (`python3 agent-HASH.zip --listen ...`)."""
    if not _zip_cache:
        buf = io.BytesIO(transport.agent_bundle())
        with zipfile.ZipFile(buf, "a", zipfile.ZIP_DEFLATED) as zf:
            info = zipfile.ZipInfo("__main__.py", date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, _MAIN)
        data = buf.getvalue()
        _zip_cache.append(("agent-%s.zip" % hashlib.sha256(data).hexdigest()[:16], data))
    return _zip_cache[0]


def check_slicer_name(name: str) -> str:
    check_vm_name(name)
    if not _DNS_LABEL.match(name):
        raise UsageError("invalid Slicer VM name %r (a DNS label: lowercase letters, digits and '-', "
                         "at most 63, not starting or ending with '-')" % name)
    return name


def _tags(node) -> dict:
    tags = {}
    for tag in node.get("tags") or []:
        key, _, value = str(tag).partition("=")
        tags[key] = value
    return tags


class ForwardChannel:
    """The agent behind the daemon's /forward WebSocket (inlets: raw bytes as binary messages)."""

    def __init__(self, ws, description: str, token: str):
        self.ws = ws
        self.description = description
        self.shipped = True
        stream = wsclient.WebSocketStream(ws)
        self.conn = Connection(stream, stream)
        try:
            self.conn.send({"op": "auth", "token": token})
            self.conn.flush()
            self.conn.recv_reply()
        except RemoteError as exc:
            self.close()
            raise AgentFailed("%s: %s" % (description, exc)) from None
        except socket.timeout:
            self.close()
            raise AgentFailed("timed out waiting for %s" % description) from None
        except (ProtocolError, OSError) as exc:
            self.close()
            reason = ws.close_reason or why(exc)
            raise AgentFailed("no git-slicer agent answered through %s (%s)" % (description, reason)) from None

    def handshake_done(self) -> None:
        self.ws.sock.settimeout(None)

    def abort(self) -> None:
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def hang_up(self) -> None:
        pass                            # close() ends the WebSocket

    def stderr_tail(self, limit: int = 2000) -> str:
        return ""                       # the agent's stderr stays in the VM (its log)

    def diagnose(self):
        return None

    def close(self, timeout: float = 10) -> None:
        self.ws.close()


class SlicerProvider(AlwaysRunning, NoEgress):
    name = "slicer"
    passes_env = False          # exec hands no variables to the command
    supports_egress = False

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
        self.connect_timeout = settings.get("slicer.connectTimeout")
        self.handshake_timeout = settings.get("slicer.handshakeTimeout")
        self.api = SlicerAPI(url, token, timeout=max(30, self.connect_timeout))
        self.uid = settings.get("slicer.uid")
        self.gid = settings.get("slicer.gid")

    # -- VM records ----------------------------------------------------------
    def _vm(self, node) -> VM:
        tags = _tags(node)
        name = tags.get("name") or node["hostname"]
        return VM(name=name, provider=self.name, address="slicer:" + node["hostname"],
                  created_at=node.get("created_at", ""), state=node.get("status") or "running",
                  id=tags.get("git-slicer-id", ""),
                  details={"hostname": node["hostname"], "hostgroup": node.get("hostgroup", ""),
                           "ip": node.get("ip", ""), "arch": node.get("arch", ""), "tags": tags})

    def _nodes(self, tag: str = None):
        nodes = self.api.request("GET", "/nodes", query={"tag": tag} if tag else None) or []
        if not isinstance(nodes, list):
            raise SlicerError("the Slicer API answered GET /nodes with something that is not a list")
        return [n for n in nodes if isinstance(n, dict) and n.get("hostname")]

    def _node(self, name: str):
        check_vm_name(name)
        tagged = [n for n in self._nodes("name=" + name) if _tags(n).get("name") == name]
        if len(tagged) > 1:
            raise SlicerError("several Slicer VMs are tagged name=%s (%s)"
                              % (name, ", ".join(sorted(n["hostname"] for n in tagged))))
        if tagged:
            return tagged[0]
        for node in self._nodes():
            if node["hostname"] == name:
                return node
        raise VMNotFound("no Slicer VM named %s" % name, hint="see `git slicer vm list --provider slicer`")

    def get(self, name: str) -> VM:
        return self._vm(self._node(name))

    def list(self):
        return [self._vm(n) for n in self._nodes()]

    def _hostgroup(self, wanted: str = None) -> str:
        group = wanted or self.settings.get("slicer.hostgroup")
        if group:
            return group
        groups = [g.get("name") for g in (self.api.request("GET", "/hostgroup") or []) if isinstance(g, dict)]
        if not groups:
            raise SlicerError("the Slicer daemon has no host groups", hint="add one to the daemon's config")
        if len(groups) > 1:
            raise UsageError("the Slicer daemon has several host groups (%s); choose one" % ", ".join(groups),
                             hint="--hostgroup NAME, or git config slicer.hostgroup NAME")
        return groups[0]

    def launch(self, name: str = None, tags=None, avoid=(), hostgroup: str = None) -> VM:
        """`avoid` (names a worktree links) cannot steer Slicer's hostnames; push checks the result."""
        if name:
            check_slicer_name(name)
            if any(n["hostname"] == name or _tags(n).get("name") == name for n in self._nodes()):
                raise UsageError("a VM named %s already exists" % name)
        group = self._hostgroup(hostgroup)
        tag_list = ["%s=%s" % (k, v) for k, v in sorted((tags or {}).items()) if k not in RESERVED_TAGS]
        if name:
            tag_list.append("name=" + name)
        tag_list.append("git-slicer=1")
        tag_list.append("git-slicer-id=" + new_vm_id())     # the VM's identity, as links know it
        path = "/hostgroup/%s/nodes" % group
        try:
            created = self.api.request("POST", path, query={"wait": "agent", "timeout": "%ds" % LAUNCH_WAIT},
                                       body={"persistent": True, "tags": tag_list}, timeout=LAUNCH_WAIT + 60)
        except APIError as exc:
            if exc.status == 408:
                raise SlicerError("the new Slicer VM's agent did not report within %d s; Slicer removed the VM "
                                  "(%s)" % (LAUNCH_WAIT, exc), hint="check the host group's image, then try again") from None
            raise
        if not isinstance(created, dict) or not created.get("hostname"):
            raise SlicerError("the Slicer API did not say which VM it launched")
        created.setdefault("tags", tag_list)
        created.setdefault("hostgroup", group)
        return self._vm(created)

    def remove(self, name: str) -> None:
        node = self._node(name)
        answer = self.api.request("DELETE", "/hostgroup/%s/nodes/%s" % (node.get("hostgroup") or self._hostgroup(),
                                                                       node["hostname"]))
        if isinstance(answer, dict) and answer.get("error"):
            raise SlicerError("Slicer could not delete VM %s: %s" % (name, answer["error"]))

    # -- the agent -------------------------------------------------------------
    def _hostname(self, vm: VM) -> str:
        return vm.details.get("hostname") or vm.address.partition(":")[2] or vm.name

    def _running_agent(self, who: str, hostname: str, zip_name: str):
        """(socket path, token file) of a running agent of this version, or None."""
        try:
            execs = self.api.request("GET", vm_path(hostname, "exec"), timeout=self.connect_timeout + self.handshake_timeout)
        except APIError as exc:
            if exc.status in (404, 405):
                raise AgentFailed("VM %s: its Slicer agent has no background exec (GET %s: HTTP %d); git-slicer "
                                  "needs background exec and /forward" % (who, vm_path(hostname, "exec"), exc.status),
                                  hint="update Slicer and the VM image's agent") from None
            raise
        for info in execs if isinstance(execs, list) else []:
            args = info.get("args") or [] if isinstance(info, dict) else []
            if not info.get("running") or len(args) != 5 or not str(args[0]).endswith("/" + zip_name):
                continue
            if args[1] != "--listen" or args[3] != "--token-file" or not str(args[2]).startswith("unix:"):
                continue
            if "uid" in info and info["uid"] not in (self.uid, str(self.uid)):
                continue
            return args[2][len("unix:"):], args[4]
        return None

    def _run(self, who: str, hostname: str, argv, stdin: bytes = None, timeout=None):
        out, err = bytearray(), bytearray()

        def collect(stream, data):
            (out if stream == "stdout" else err).extend(data)
            del err[:-8192]
        code = run(self.api, hostname, "VM %s" % who, argv, self.uid, self.gid, stdin, collect, timeout)
        return code, bytes(out), bytes(err).decode("utf-8", "replace")

    def _start_agent(self, who: str, hostname: str, zip_name: str, zip_data: bytes):
        """Ship the agent and a fresh token, start it in the background, wait until it listens."""
        budget = self.connect_timeout + self.handshake_timeout
        code, out, err = self._run(who, hostname, ["sh", "-c", PREPARE_SCRIPT, "sh", zip_name], timeout=budget)
        if code != 0:
            said = [l[len("git-slicer: "):] for l in err.splitlines() if l.startswith("git-slicer: ")]
            raise AgentFailed("VM %s: %s" % (who, said[0] if said else "could not prepare the agent "
                                             "(exit status %d%s)" % (code, ": " + err.strip()[-300:] if err.strip() else "")))
        lines = out.decode("utf-8", "replace").splitlines()
        if len(lines) != 2 or not lines[0].startswith("/"):
            raise AgentFailed("VM %s: unexpected answer while preparing the agent: %r" % (who, out[:200]))
        directory, present = lines
        nonce = secrets.token_hex(6)
        zip_path, token_path = directory + "/" + zip_name, "%s/%s.token" % (directory, nonce)
        token = secrets.token_hex(32)
        copies = ([(zip_path, zip_data)] if present != "have" else []) + [(token_path, token.encode())]
        for path, data in copies:
            status, _, body = self.api.send("POST", vm_path(hostname, "cp"),
                                            {"path": path, "mode": "binary", "uid": self.uid, "gid": self.gid,
                                             "permissions": "0600"}, data, timeout=budget)
            self.api.check(status, "POST", vm_path(hostname, "cp"), body)
        socket_path = "%s/%s.sock" % (directory, nonce)
        argv = ["python3", zip_path, "--listen", "unix:" + socket_path, "--token-file", token_path]
        exec_id = self._background(who, hostname, argv, directory, budget)
        try:
            self._wait_listening(who, hostname, exec_id, budget)
        except SlicerError:
            self._kill(hostname, exec_id)
            raise
        return socket_path, token, exec_id

    def _kill(self, hostname: str, exec_id: str) -> None:
        """Stop an agent this session started but cannot use (best effort)."""
        try:
            self.api.send("POST", vm_path(hostname, "exec", exec_id, "kill"), body=b"{}",
                          content_type="application/json", timeout=self.connect_timeout)
        except SlicerError:
            pass

    def _background(self, who: str, hostname: str, argv, cwd: str, timeout: float) -> str:
        conn, response = self.api.open_stream("POST", vm_path(hostname, "exec"),
                                              exec_query(argv, self.uid, self.gid, False, cwd, background=True),
                                              b"", timeout=timeout)
        try:
            if "ndjson" in (response.getheader("Content-Type") or ""):
                raise AgentFailed("VM %s: its Slicer agent ran the agent in the foreground instead of in the "
                                  "background (background=true ignored); git-slicer needs background exec"
                                  % who, hint="update Slicer and the VM image's agent")
            try:
                answer = json.loads(response.read(65536))
            except (ValueError, OSError):
                answer = None
        finally:
            conn.close()
        if not isinstance(answer, dict) or not answer.get("exec_id"):
            raise AgentFailed("VM %s: the Slicer API did not return an exec_id for the background agent" % who)
        return str(answer["exec_id"])

    def _wait_listening(self, who: str, hostname: str, exec_id: str, timeout: float) -> None:
        """Follow the agent's log until it says it listens (or exits, saying why)."""
        conn, response = self.api.open_stream("GET", vm_path(hostname, "exec", exec_id, "logs"),
                                              {"follow": "true"}, timeout=timeout)
        reader = ExecOutput("VM %s" % who, base64_asked=False)
        said = bytearray()
        try:
            while True:
                line = response.readline()
                if not line:
                    break
                for _, data in reader.feed(line):
                    said += data
                if b"git-slicer agent: listening on " in said:
                    return
                if reader.exit_code is not None:
                    break
        except socket.timeout:
            raise AgentFailed("VM %s: the agent did not start listening within %gs" % (who, timeout)) from None
        except OSError as exc:
            raise AgentFailed("VM %s: lost the agent's log: %s" % (who, why(exc))) from None
        finally:
            conn.close()
        text = said.decode("utf-8", "replace").strip().splitlines()
        raise AgentFailed("VM %s: the agent exited before listening%s" % (who, (": " + text[-1][:300]) if text else ""))

    def _read_token(self, hostname: str, token_file: str) -> str:
        status, _, body = self.api.send("GET", vm_path(hostname, "cp"), {"path": token_file, "mode": "binary"},
                                        timeout=self.connect_timeout + self.handshake_timeout)
        if status >= 400:
            return ""
        return body.decode("utf-8", "replace").strip()

    def _open(self, vm: VM, hostname: str, socket_path: str, token: str) -> ForwardChannel:
        description = "the agent of VM %s (Slicer /forward)" % vm.name
        headers = {"X-Inlets-Mode": "local", "X-Inlets-Upstream": "unix:" + socket_path,
                   "X-Inlets-Client-ID": "git-slicer"}
        try:
            ws = self.api.websocket(vm_path(hostname, "forward"), headers=headers, timeout=self.connect_timeout)
        except SlicerError as exc:
            raise AgentFailed("VM %s: %s" % (vm.name, exc)) from None
        ws.sock.settimeout(self.handshake_timeout)
        return ForwardChannel(ws, description, token)

    def connect(self, vm: VM):
        hostname = self._hostname(vm)
        zip_name, zip_data = agent_zip()
        found = self._running_agent(vm.name, hostname, zip_name)
        if found:
            token = self._read_token(hostname, found[1])
            if token:
                try:
                    return self._open(vm, hostname, found[0], token)
                except AgentFailed:
                    pass                    # gone or stuck: start a fresh one below
        socket_path, token, exec_id = self._start_agent(vm.name, hostname, zip_name, zip_data)
        try:
            return self._open(vm, hostname, socket_path, token)
        except SlicerError:
            self._kill(hostname, exec_id)   # a daemon without a working /forward: leave nothing running
            raise

    # -- commands ----------------------------------------------------------------
    def exec(self, vm: VM, argv, cwd: str = "", interactive: bool = False) -> int:
        """Run argv in the VM with all of our stdin (none from a terminal), streaming its output."""
        data = None
        if not interactive:
            try:
                data = sys.stdin.buffer.read()
            except (OSError, ValueError, AttributeError):
                data = b""
        out, err = sys.stdout.buffer, sys.stderr.buffer

        def write(stream, chunk):
            target = out if stream == "stdout" else err
            target.write(chunk)
            target.flush()
        try:
            return run(self.api, self._hostname(vm), "VM %s" % vm.name,
                       ["sh", "-c", EXEC_SCRIPT, "sh", cwd or ""] + list(argv), self.uid, self.gid, data, write)
        except APIError as exc:
            raise AgentFailed("VM %s: %s" % (vm.name, exc)) from None

    def shell(self, vm: VM, cwd: str = "") -> int:
        """An interactive shell on the daemon's /vm/{h}/shell PTY WebSocket."""
        hostname = self._hostname(vm)
        where = ""
        if cwd:
            code, out, _ = self._run(vm.name, hostname, ["sh", "-c", EXEC_SCRIPT, "sh", cwd, "pwd"],
                                     timeout=self.connect_timeout + self.handshake_timeout)
            where = out.decode("utf-8", "replace").strip() if code == 0 else ""
        query = {"uid": self.uid, "gid": self.gid}
        if where:
            query["cwd"] = where
        try:
            ws = self.api.websocket(vm_path(hostname, "shell"), query=query, timeout=self.connect_timeout)
        except SlicerError as exc:
            raise AgentFailed("VM %s: %s" % (vm.name, exc)) from None
        ws.sock.settimeout(None)
        return ShellSession(ws).run()
