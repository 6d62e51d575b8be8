"""The host's side of protocol v1: one long-lived connection to an agent per operation.

`open_session` is the only way to get one: it applies every limit (slicer.limit.frameBytes for
control messages, the slicer.limit.seconds deadline) before anything is read, so no caller can
forget them. `AgentSession` has one typed method per agent operation (`op_*` in
agent/server.py): `state`, `push`, `fetch`, `files`, `exec`; `state` validates what the VM says.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass

from . import __version__, report
from .errors import AgentFailed, SlicerError, StaleLink, UnprovenLink, UnsafeInput, WouldLoseWork
from .links import new_vm_id
from .quarantine import check_state
from .transport import Channel
from .wire import tarstream
from .wire.framing import AGENT_NAME, DEFAULT_MAX_JSON, PROTOCOL_VERSION, ProtocolError, RemoteError
from .wire.paths import display

STATE_ENTRIES = 1_000_000      # the most changed paths any `state` reply may list


@dataclass
class SessionLimits:
    """What one session accepts from the VM and how long it may last (0: no deadline)."""
    frame_bytes: int = DEFAULT_MAX_JSON
    seconds: int = 0
    path_bytes: int = 4096
    path_depth: int = 64
    entries: int = STATE_ENTRIES        # changed paths one state may list (slicer.limit.files)
    progress: str = "auto"              # slicer.progress: byte-count bars for long transfers

    @classmethod
    def from_settings(cls, settings) -> "SessionLimits":
        return cls(frame_bytes=settings.get("slicer.limit.frameBytes"),
                   seconds=settings.get("slicer.limit.seconds"),
                   path_bytes=settings.get("slicer.limit.pathBytes"),
                   path_depth=settings.get("slicer.limit.pathDepth"),
                   entries=min(settings.get("slicer.limit.files"), STATE_ENTRIES),
                   progress=settings.get("slicer.progress"))


def stale(name: str, why: str, gone: bool = False) -> StaleLink:
    """`gone`: no VM has that name now (a new one is launched), else another VM has it."""
    again = "`git slicer push --launch %s` starts over in a new VM" if gone else \
        "`git slicer push %s` starts over in the VM called so now"
    return StaleLink("this worktree's link to VM %s is stale: %s; nothing was sent" % (name, why),
                     hint="`git slicer unlink %s` forgets it (work not pulled from the old VM is gone with "
                          "it), then %s" % (name, again % name))


def unproven(name: str, why: str) -> UnprovenLink:
    """A link saved before VMs had ids, to a VM with an id of its own: it may be another VM of
    that name, and nothing tells (the VM may also have taken its id from another worktree)."""
    return UnprovenLink("this worktree's link to VM %s was made before VMs had ids, and %s: it may be another "
                        "VM of that name; nothing was sent" % (name, why),
                        hint="if it is yours: `git slicer unlink %s`, `git fetch slicer::%s` keeps its commits, "
                             "then `git slicer push --force %s`" % (name, name, name))


def check_identity(vm, link_id) -> None:
    """The provider's record of `vm` must carry the id the link remembers (when both have one).
    `link_id` "" is a link saved before VMs had ids: a VM whose record has one was made later."""
    if link_id and vm.id and vm.id != link_id:
        raise stale(vm.name, "the VM now called %s (%s) is not the one it was linked to" % (vm.name, vm.provider))
    if link_id == "" and vm.id:
        raise stale(vm.name, "it was made before VMs had ids, and VM %s (%s) was made with one since"
                    % (vm.name, vm.provider))


def open_session(provider, vm, settings, link_id: str = None, deadline: int = None,
                 adopt: bool = True) -> "AgentSession":
    """One long-lived connection for the operation, with every limit applied; a failed handshake
    becomes one line that says why (refused, no agent, wrong version, auth failed, timeout, no
    python3/git). `deadline` shortens slicer.limit.seconds for this session.

    `link_id` is the VM id the caller's saved link remembers (None: no link yet; "": a link
    saved before VMs had ids): the record and the agent (which keeps the id in the VM) must both
    answer with it. A link without an id takes one only from a VM that had none either (and
    only with `adopt`): the VM keeps the id offered now. `session.vm_id` is the id the VM
    confirmed, for the link to keep."""
    check_identity(vm, link_id)
    started = time.monotonic()
    limits = SessionLimits.from_settings(settings)
    if deadline:
        limits.seconds = min(deadline, limits.seconds) if limits.seconds > 0 else deadline
    channel = provider.connect(vm)
    session = AgentSession(channel, vm.name, limits)
    # The VM may take an id it lacks only when the provider's record vouches for it, or when no
    # link expects one yet: a replaced VM must not adopt the old VM's identity.
    offer = vm.id or (new_vm_id() if not link_id and adopt else "")
    try:
        info = session.hello(vm_id=offer)
    except SlicerError as exc:
        reason = channel.diagnose()
        channel.close()
        if reason:
            raise AgentFailed("VM %s: %s" % (vm.name, reason), hint=exc.hint) from None
        raise
    expected = link_id or vm.id
    answered = info.get("vm_id") if "vm_id" in info else expected     # an agent too old to keep ids
    if expected and answered != expected:
        session.close(polite=False)
        raise stale(vm.name, "the VM answering as %s is not the one it was linked to (it reports %s)"
                    % (vm.name, "no identity" if not answered else "another identity"))
    if link_id == "" and answered and answered != offer:
        session.close(polite=False)
        raise unproven(vm.name, "the VM answering as %s has one of its own" % vm.name)
    session.vm_id = answered if isinstance(answered, str) else ""
    channel.handshake_done()
    session.start_deadline()
    report.info("VM %s (%s, %s): agent %s, %s, python %s, answered in %.0f ms" % (
        vm.name, provider.name, vm.address or "-", info.get("version"), info.get("git"), info.get("python"),
        (time.monotonic() - started) * 1000))
    return session


class AgentSession:
    def __init__(self, channel: Channel, vm: str, limits: SessionLimits = None):
        self.channel = channel
        self.conn = channel.conn
        self.vm = vm
        self.limits = limits or SessionLimits()
        self.conn.max_json = self.limits.frame_bytes
        self.info = {}
        self.vm_id = ""          # the identity the VM confirmed at hello (see open_session)
        self._begun = False      # a push-begin holds the agent's lock until push or cancel
        self._bar = report.attach(self.conn, "VM %s" % vm, self.limits.progress)   # tqdm on a TTY
        self._timer = None

    def start_deadline(self) -> None:
        """Cut the connection if the whole operation takes longer than slicer.limit.seconds:
        a VM that stalls or trickles cannot hold the host forever."""
        seconds = self.limits.seconds

        def expire():
            self.conn.closed_reason = ("VM %s did not finish within slicer.limit.seconds (%d s); "
                                       "the operation was stopped" % (self.vm, seconds))
            self.channel.abort()
        if seconds and seconds > 0 and self._timer is None:
            self._timer = threading.Timer(seconds, expire)
            self._timer.daemon = True
            self._timer.start()

    # -- plumbing --------------------------------------------------------------
    def failure(self, exc) -> AgentFailed:
        """The one-line error for a broken exchange: the deadline, the agent's own error, or
        the last words of a dead agent."""
        tail = self.channel.stderr_tail()
        if self.conn.closed_reason:
            return AgentFailed(self.conn.closed_reason)
        if isinstance(exc, RemoteError):
            if exc.code == "vm-changed":
                return WouldLoseWork("VM %s: %s" % (self.vm, exc))
            if exc.code == "push-stuck":      # every request stops on it until the VM is fixed
                return AgentFailed("VM %s: %s" % (self.vm, exc),
                                   hint="make room in the VM (`git slicer shell %s`), then run the command "
                                        "again" % self.vm)
            return AgentFailed("VM %s: %s" % (self.vm, exc), code=exc.code)
        message = "lost the agent in VM %s: %s" % (self.vm, exc)
        if tail:
            message += " (agent said: %s)" % display(tail.splitlines()[-1][:300])
        return AgentFailed(message)

    def _request(self, message: dict) -> dict:
        try:
            self.conn.send(message)
            return self.conn.recv_reply()
        except (ProtocolError, RemoteError, OSError) as exc:
            raise self.failure(exc) from None

    def reply(self) -> dict:
        """The agent's final answer to a request whose streams are done."""
        try:
            return self.conn.recv_reply()
        except (ProtocolError, RemoteError, OSError) as exc:
            raise self.failure(exc) from None

    # -- requests, one per agent operation -----------------------------------------
    def hello(self, vm_id: str = None) -> dict:
        """`vm_id`: the identity the VM should keep if it has none yet (it answers with its own)."""
        message = {"op": "hello", "protocol": PROTOCOL_VERSION, "client": "git-slicer/" + __version__}
        if vm_id:
            message["vm_id"] = vm_id
        nice = _niceness()
        if nice > 0:                # `nice git slicer ...`, the hooks' runner: the VM's side yields too
            message["nice"] = nice
        try:
            self.conn.send(message)
            reply = self.conn.recv_reply()
        except RemoteError as exc:
            raise AgentFailed("VM %s: incompatible agent: %s" % (self.vm, exc)) from None
        except (ProtocolError, OSError) as exc:
            raise self.failure(ProtocolError("no git-slicer agent answered (%s)" % exc)) from None
        if reply.get("agent") != AGENT_NAME or reply.get("protocol") != PROTOCOL_VERSION:
            raise AgentFailed("VM %s: not a git-slicer agent speaking protocol %d" % (self.vm, PROTOCOL_VERSION))
        self.info = reply
        return reply

    def state(self, path: str, base: str = None, applied: str = None, max_entries: int = STATE_ENTRIES,
              known=False, fresh: bool = False) -> dict:
        """The VM repository's branch, HEAD and overlay (and commits ahead of/behind `base`; and
        with `applied`, a push id, that push's record if it is the last one the VM completed),
        validated (types, object ids, modes, every path) before anyone uses it. `known`: names with
        control characters the host already has (scan.KnownPaths), which the VM may report too.
        `fresh`: a full scan, never a warm agent's memory of one (agents that do not know the
        field always scan in full)."""
        message = {"op": "state", "path": path}
        if fresh:
            message["fresh"] = True
        if base:
            message["base"] = base
        if applied:
            message["applied"] = applied
        state = check_state(self._request(message), self.limits.path_bytes, self.limits.path_depth,
                            min(max_entries, self.limits.entries), control_ok=known)
        self._warn_kept(state)
        return state

    def push_begin(self, path: str, applied: str = None, known=False) -> dict:
        """The VM's state, read under the agent's lock, which it keeps until this session's next
        request: `push` (then applied against exactly this state) or `cancel()`. Validated like
        `state`. Agents without the capability get a plain `state` (then `push` sends `expect`)."""
        if not self.supports("push-begin"):
            return self.state(path, applied=applied, known=known)
        message = {"op": "push-begin", "path": path}
        if applied:
            message["applied"] = applied
        reply = self._request(message)
        self._begun = True
        state = check_state(reply, self.limits.path_bytes, self.limits.path_depth, self.limits.entries,
                            control_ok=known)
        state["begun"] = True
        self._warn_kept(state)
        return state

    def _warn_kept(self, state: dict) -> None:
        """Say where the VM keeps work that finishing an interrupted push would have overwritten
        (agent/kept.py): in a ref of its own, until the VM deletes it (three refs at most)."""
        entries = state.get("kept") or []
        for entry in entries[:3]:
            paths = entry["paths"]
            report.warn_once("VM %s keeps its own changes to %s, made while a push into it lay interrupted, in "
                             "its ref %s (the push is finished over them): see them with `git slicer exec %s -- "
                             "git show %s:<path>`, and delete the ref once you have them"
                             % (self.vm, ", ".join(map(display, paths[:10])) + (" and %d more" % (len(paths) - 10)
                                                                               if len(paths) > 10 else ""),
                                entry["ref"], self.vm, entry["ref"]))
        if len(entries) > 3:
            report.warn_once("VM %s keeps %d more refs like these under refs/slicer/kept/ (`git slicer status %s "
                             "--json` lists them)" % (self.vm, len(entries) - 3, self.vm))

    def end_push_begin(self) -> None:
        """After push_begin: if no push was sent, cancel, so the agent releases its lock (on a
        broken connection there is nothing to release: the agent saw it end)."""
        if self._begun:
            self._begun = False
            try:
                self._request({"op": "cancel"})
            except SlicerError:
                pass

    def push(self, path: str, *, push_id: str, branch: str, commit: str, object_format: str, overlay: dict,
             reuse: list, extra: list, pack: bool, tar: bool, shallow: list, expect, config: dict,
             remotes: dict, excludes: list, checkout: dict = None, attributes: list = None,
             pending: list = None) -> dict:
        """Start a push: the agent answers "ready" (or refuses). The caller then sends the pack
        (if `pack`) and the file stream (if `tar`) on `conn`, then for `pending` files (their
        overlay ids placeholders) `send_ids`, and reads the result with `reply()`."""
        self._begun = False
        return self._request({"op": "push", "id": push_id, "path": path, "branch": branch, "commit": commit,
                              "object_format": object_format, "overlay": overlay, "reuse": reuse, "extra": extra,
                              "pack": pack, "tar": tar, "shallow": shallow, "expect": expect, "config": config,
                              "remotes": remotes, "excludes": excludes,
                              **({"checkout": checkout, "attributes": attributes} if checkout is not None else {}),
                              **({"pending": pending} if pending else {})})

    def send_ids(self, ids: dict) -> None:
        """After a push's streams: the blob ids of its pending files (path -> Entry)."""
        self.conn.send({"ids": {path: entry.oid for path, entry in ids.items()}})

    def abandon_push(self, reason: str) -> None:
        """After a push's streams, instead of `send_ids`: the agent drops the push (and answers
        with an error, which the caller's own reason replaces)."""
        try:
            self.conn.send({"abort": reason})
            self.conn.recv_reply()
        except (ProtocolError, RemoteError, OSError):
            pass

    def supports(self, capability: str) -> bool:
        caps = self.info.get("caps")
        return isinstance(caps, list) and capability in caps

    def pushed(self, known=False) -> dict:
        """The agent's answer once a push's streams are sent: the VM's state after the push,
        validated like `state`."""
        return check_state({**self.reply(), "exists": True}, self.limits.path_bytes, self.limits.path_depth,
                           self.limits.entries, control_ok=known)

    def fetch(self, path: str, wants: list, haves: list, receive, max_bytes: int) -> dict:
        """Ask for a pack of `wants` minus `haves`; `receive(chunks)` consumes it (at most
        `max_bytes`)."""
        self._request({"op": "fetch", "path": path, "wants": wants, "haves": haves})
        try:
            receive(self.conn.recv_stream(max_bytes))
            return self.conn.recv_reply()
        except (ProtocolError, RemoteError, OSError) as exc:
            raise AgentFailed("VM %s: fetching objects failed: %s" % (self.vm, exc)) from None

    def files(self, path: str, files: dict, into: str, limits: tarstream.Limits, control_ok=False,
              algo: str = None) -> list:
        """The named worktree files (path -> [mode, blob id]) staged under `into`, within
        `limits`; the caller checks each against its blob id (with `algo`, each member's `oid`
        is computed as it is staged)."""
        self._request({"op": "files", "path": path, "files": files})
        try:
            members = tarstream.read_members(self.conn.recv_stream(limits.max_total_bytes + 1024 * (len(files) + 4)),
                                             into, limits, control_ok=control_ok, algo=algo)
            self.conn.recv_reply()
        except tarstream.UnsafeArchive as exc:
            raise UnsafeInput("files from VM %s refused: %s" % (self.vm, exc)) from None
        except (ProtocolError, RemoteError, OSError) as exc:
            raise AgentFailed("VM %s: fetching files failed: %s" % (self.vm, exc)) from None
        return members

    def exec(self, argv, cwd: str, out, err, env: dict = None) -> int:
        """Run `argv` in the guest at `cwd` (no stdin), with `env` added to its environment for
        this one command: copy its output frames to `out`/`err`, return its exit code."""
        conn = self.conn
        try:
            request = {"op": "exec", "argv": list(argv), "cwd": cwd or ""}
            if env:
                request["env"] = dict(env)
            conn.send(request)
            while True:
                kind, payload = conn.read_frame()
                if kind == b"D" and payload:
                    target = out if payload[:1] == b"\x01" else err
                    target.write(payload[1:])
                    target.flush()
                    continue
                if kind != b"J":
                    raise ProtocolError("unexpected %r frame in exec output" % kind)
                message = json.loads(payload)
                if message.get("ok") is True:
                    return int(message.get("exit", 1))
                error = message.get("error") or {}
                if error.get("code") == "not-found":
                    err.write(("git-slicer: %s\n" % error.get("message", "command not found")).encode())
                    err.flush()
                    return 127
                if error.get("code") == "unknown-op":
                    raise AgentFailed("the agent in VM %s is too old to run commands (no exec op)" % self.vm)
                raise AgentFailed("VM %s: %s" % (self.vm, error.get("message", "exec failed")))
        except (ProtocolError, OSError, ValueError) as exc:
            raise self.failure(exc) from None

    def close(self, polite: bool = True) -> None:
        if polite:      # after a failure the stream may be mid-way: just hang up
            try:
                self.conn.send({"op": "bye"})
                self.conn.recv_reply()
            except (ProtocolError, RemoteError, OSError):
                pass
        else:
            self.channel.hang_up()
        self._bar.close()
        self.channel.close()
        if self._timer is not None:
            self._timer.cancel()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(polite=exc_type is None)


def _niceness() -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        return 0
