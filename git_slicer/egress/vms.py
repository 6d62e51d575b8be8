"""A VM's allowlist as the commands see it: launch with one, widen or narrow it, read its log.

Providers that enforce an allowlist (today: local) say so (`supports_egress`), take `allow=` at
launch and answer `set_egress(name, rules)` and `egress_log(name)`; for the others every one of
these says so in one line (providers.no_egress) instead of launching a VM that would silently
have no way out.
"""

from __future__ import annotations

from ..errors import UsageError
from ..providers import no_egress
from .allowlist import BadHost, merge, remove


def _check(provider) -> None:
    if not provider.supports_egress:
        raise no_egress(provider)


def checked_rules(texts) -> list:
    """Canonical rule texts from `--allow` values; a bad one is a usage error naming it."""
    try:
        return merge([], texts)
    except BadHost as exc:
        raise UsageError(str(exc), hint="--allow HOST, HOST:PORT, *.DOMAIN or an IP address") from None


def launch(provider, name: str = None, tags=None, allow=(), **options):
    """provider.launch(name, tags, **options), with the allowlist when there is one."""
    rules = checked_rules(allow)
    if not rules:
        return provider.launch(name, tags=tags, **options)
    _check(provider)
    return provider.launch(name, tags=tags, allow=rules, **options)


def change(provider, vm, hosts, widen: bool) -> dict:
    """`vm allow` (widen) or `vm deny`: the new allowlist of `vm` (a VM from provider.get)."""
    _check(provider)
    current = list(vm.details.get("egress", []))
    wanted = checked_rules(hosts)
    if widen:
        rules, missing = merge(current, wanted), []
    else:
        rules, missing = remove(current, wanted)
    updated = provider.set_egress(vm.name, rules)
    return {"vm": updated.name, "egress": list(updated.details.get("egress", [])), "not_listed": missing}


def entries(provider, vm, limit: int = 0) -> list:
    _check(provider)
    return provider.egress_log(vm.name).read(limit)
