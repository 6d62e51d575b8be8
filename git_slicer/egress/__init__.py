"""A VM's way out: its egress allowlist and the host-side filtering proxy that enforces it.

    allowlist.py  HOST[:PORT] rules: parsing, canonical hosts, matching a requested target
    proxy.py      the proxy (HTTP CONNECT and plain HTTP) on a unix socket in a 0700 directory
    log.py        the per-VM connection log (`git slicer vm log VM`)

The VM side is git_slicer/agent/forward.py (stdlib only): it exposes the proxy's socket on
127.0.0.1 inside the sandbox. See docs/egress.md.
"""
