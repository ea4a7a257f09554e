"""Live configuration: what a running front end takes again from its configuration file without a
restart (SIGHUP, or ``paysw reload`` to every front end on the journal), and what only a restart
applies.

A reload reads and checks the whole file first (``load_config``, then the risk rules against the
merchants and terminals it names) and applies nothing unless all of it is valid, as nginx and
Envoy do: an invalid file leaves the running configuration as it was, and says why. Of a valid
file, the merchants (suspension, channels, their ids and rate quotas, fees, notification URL),
the terminals (a new one needs its master key, as at start) and the routing apply at once; a
change anywhere else (listeners, database, channels and their actors, security, the merchant API,
reconciliation, risk settings, a merchant's API key) is named as needing a restart, and the
running value stays."""

from __future__ import annotations

from switch.config import Config

RELOADED = "reloaded"
NOTIFY_CHANNEL = "paysw_reload"  # ``paysw reload`` tells every front end on the journal
LIVE = frozenset({"merchants", "terminals", "routing"})
_NOT_COMPARED = frozenset({"base_dir", "source"})


def restart_needed(running: Config, read: Config) -> list[str]:
    """Where ``read`` differs from ``running`` in what only a restart applies (JSON paths)."""
    later = [
        f"$.{name}"
        for name in Config.__struct_fields__
        if name not in LIVE | _NOT_COMPARED and getattr(running, name) != getattr(read, name)
    ]
    before, after = ({m.id: m.api_key for m in c.merchants} for c in (running, read))
    later += [  # the merchant API's keys are opened at start
        f"$.merchants[{i}].api_key" for i in sorted(before | after) if before.get(i, "") != after.get(i, "")
    ]
    return later
