"""Egress rules: `HOST`, `HOST:PORT`, `*.DOMAIN[:PORT]`, `IP`, `[IPv6]:PORT`.

A rule without a port allows 80 and 443. Hosts are compared in one canonical form: names
lower-case without a trailing dot, IP addresses as `ipaddress` prints them. An IP address is
allowed only by a rule naming that address (never by a name or a wildcard), and a "name" that
any resolver would read as a number (`127.1`, `0x7f000001`, `2130706433`) is no name: it is
refused, so a request cannot reach an address through a spelling no rule lists.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

DEFAULT_PORTS = (80, 443)
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class BadHost(ValueError):
    """A host or port that is not acceptable (the message says why)."""


def canonical_host(text: str, wildcard: bool = False) -> str:
    """The canonical form of a host name or IP literal; BadHost when it is neither."""
    host = text
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.IPv6Address(host[1:-1]).compressed
        except ValueError:
            raise BadHost("bad IPv6 address %r" % text) from None
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    name = host.lower()
    name = name[:-1] if name.endswith(".") else name
    prefix = ""
    if wildcard and name.startswith("*."):
        prefix, name = "*.", name[2:]
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise BadHost("bad host name %r" % text)
    if labels[-1].isdigit() or _numeric(name):
        raise BadHost("%r is an IP address in disguise; write the address itself" % text)
    return prefix + name


def _numeric(name: str) -> bool:
    """True when the C resolver would read `name` as an IPv4 address (inet_aton forms)."""
    try:
        socket.inet_aton(name)
        return True
    except OSError:
        return False


def parse_port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0") or not 0 < int(text) < 65536:
        raise BadHost("bad port %r" % text)
    return int(text)


def split_authority(text: str):
    """`host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address -> (host text, port text or "")."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadHost("bad address %r" % text)
        rest = text[end + 1:]
        if rest and not rest.startswith(":"):
            raise BadHost("bad address %r" % text)
        return text[:end + 1], rest[1:] if rest else ""
    if text.count(":") > 1:                 # a bare IPv6 address has no port
        return text, ""
    host, sep, port = text.partition(":")
    if sep and not port:
        raise BadHost("bad address %r (empty port)" % text)
    return host, port


@dataclass(frozen=True)
class Rule:
    host: str           # canonical; "*.example.com" matches subdomains only
    port: int = 0       # 0: ports 80 and 443

    @property
    def text(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s:%d" % (host, self.port) if self.port else host

    @property
    def is_ip(self) -> bool:
        return _is_ip(self.host)

    def matches(self, host: str, port: int) -> bool:
        if port != self.port and not (self.port == 0 and port in DEFAULT_PORTS):
            return False
        if self.host.startswith("*."):
            return not _is_ip(host) and host.endswith(self.host[1:])
        return host == self.host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def parse_rule(text: str) -> Rule:
    """One `--allow` value; BadHost names what is wrong."""
    if not text or any(c.isspace() for c in text) or "/" in text or "@" in text:
        raise BadHost("bad egress rule %r (expected HOST, HOST:PORT, *.DOMAIN or an IP address)" % text)
    host, port = split_authority(text)
    return Rule(canonical_host(host, wildcard=True), parse_port(port) if port else 0)


def parse_target(text: str, default_port: int = 0):
    """A requested `host:port` (CONNECT target, URL authority or Host header) -> (host, port)."""
    host, port = split_authority(text)
    if not port and not default_port:
        raise BadHost("%r has no port" % text)
    return canonical_host(host), parse_port(port) if port else default_port


def find_rule(rules, host: str, port: int):
    """The rule that allows host:port, or None."""
    for rule in rules:
        if rule.matches(host, port):
            return rule
    return None


def merge(existing, texts):
    """Rules `existing` (texts) plus `texts`, canonical, without duplicates, in order."""
    out = []
    for text in list(existing) + list(texts):
        rule = parse_rule(text).text
        if rule not in out:
            out.append(rule)
    return out


def remove(existing, texts):
    """`existing` without the rules `texts` name; also returns the texts that matched none."""
    gone = {parse_rule(t).text for t in texts}
    kept = [t for t in existing if parse_rule(t).text not in gone]
    missing = sorted(gone - {parse_rule(t).text for t in existing})
    return kept, missing
