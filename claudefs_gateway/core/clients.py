# -*- test-case-name: tests.core.test_clients -*-
"""
Who is connected: every client connection of every protocol, in one table.

This is what C{smbstatus} shows for Samba and C{ganesha_mgr} for NFS-Ganesha,
for all the gateway's protocols at once: C{GET /admin/clients} serves it and
C{cfs-gateway status} prints it.

A connection enters the table when its front end counts it
(L{claudefs_gateway.core.drain.Activity.connection_made}, which every front end
already calls) and leaves when it closes, so the table needs nothing more from
a front end to list protocol, client address and port, and connection time.
What only a front end knows, it tells by giving its connection object (the
Protocol it passes to the Activity) a C{describe()} method returning a dict
with any of::

    user        the user name the connection works as (SMB session, S3 signer)
    uid         numeric uid (NFS AUTH_SYS); the name is looked up when absent
    dialect     protocol version: "NFSv3", "SMB 3.1.1", "HTTP/1.1"...
    opens       open files
    locks       byte-range locks held
    leases      leases, oplocks or delegations held
    lock_client [protocol, client]: the lock table's name for this client, so
                its locks can be counted when the front end does not count them
    state_of    the holder of the opens, locks and leases the row shows, when
                several connections show the same ones (an NFSv4 client over
                several connections, an NFSv3 host's NFS and NLM connections):
                the per-protocol totals count each holder once

plus any other short facts (they are passed through). C{describe} is called
only when someone asks for the table, never per request; it must be cheap and
must not raise (a failure is logged and the row shows what the table knows).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from claudefs_gateway.core.log import Logger

__all__ = ["ClientConnection", "ClientTable", "STANDARD_FIELDS", "summarize"]

#: The facts every row has (0 or None when a front end does not say).
STANDARD_FIELDS = ("user", "uid", "dialect", "opens", "locks", "leases")

_ids = itertools.count(1)


@attrs.define(eq=False)
class ClientConnection:
    """One row: a connection the table knows by its protocol object."""

    id: int
    protocol: str
    address: str
    port: int
    since: float
    proto: Any = attrs.field(repr=False)


def _peer(proto: Any) -> tuple[str, int]:
    transport = getattr(proto, "transport", None)
    try:
        peer = transport.getPeer() if transport is not None else None
    except Exception:
        peer = None
    host = getattr(peer, "host", None)
    if host is None:
        name = getattr(peer, "name", None)
        return ("unix:" + (name.decode() if isinstance(name, bytes) else str(name or ""))), 0
    if host.startswith("::ffff:"):
        host = host[7:]
    return host, int(getattr(peer, "port", 0) or 0)


class ClientTable:
    """
    The live connections of every protocol (see module docstring).

    @param clock: for each connection's start time (wall clock seconds).
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._rows: dict[int, ClientConnection] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, protocol: str, proto: Any) -> ClientConnection:
        """Enter C{proto}, a new connection of C{protocol}."""
        address, port = _peer(proto)
        row = ClientConnection(next(_ids), protocol, address, port, self._clock.seconds(), proto)
        self._rows[id(proto)] = row
        return row

    def remove(self, proto: Any) -> None:
        """Forget C{proto} (closed); unknown connections are ignored."""
        self._rows.pop(id(proto), None)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per protocol, the C{opens} and C{leases} connections report (for metrics)."""
        out: dict[str, dict[str, int]] = {}
        counted: set[tuple[str, str]] = set()
        for row in self._rows.values():
            c = out.setdefault(row.protocol, {"opens": 0, "leases": 0})
            describe = getattr(row.proto, "describe", None)
            if describe is None:
                continue
            try:
                facts = describe()
            except Exception:
                continue
            holder = facts.get("state_of")
            if isinstance(holder, str):
                if (row.protocol, holder) in counted:
                    continue
                counted.add((row.protocol, holder))
            for k in ("opens", "leases"):
                v = facts.get(k)
                if isinstance(v, int):
                    c[k] += v
        return out

    def rows(self) -> list[ClientConnection]:
        return sorted(self._rows.values(), key=lambda r: r.id)

    def snapshot(
        self,
        user_of: Callable[[int], str | None] = lambda uid: None,
        locks_of: Callable[[str, Any], int | None] = lambda protocol, client: None,
    ) -> list[dict[str, Any]]:
        """
        Every connection as a JSON-ready dict, oldest first.

        @param user_of: the user name of a uid (the user database), used when a
            front end gives a uid but no name.
        @param locks_of: locks the lock table holds for a C{lock_client}, used
            when a front end names its lock client but does not count locks.
        """
        now = self._clock.seconds()
        out = []
        for row in self.rows():
            doc: dict[str, Any] = {
                "id": row.id,
                "protocol": row.protocol,
                "address": row.address,
                "port": row.port,
                "connected_secs": round(max(0.0, now - row.since), 1),
                "user": None,
                "uid": None,
                "dialect": None,
                "opens": 0,
                "locks": 0,
                "leases": 0,
            }
            facts: dict[str, Any] = {}
            describe = getattr(row.proto, "describe", None)
            if describe is not None:
                try:
                    facts = dict(describe())
                except Exception:
                    self._log.failure("describing a {protocol} connection", protocol=row.protocol)
                doc.update({k: v for k, v in facts.items() if v is not None})
            lock_client = doc.pop("lock_client", None)
            if lock_client is not None and "locks" not in facts:
                held = locks_of(*lock_client)
                if held is not None:
                    doc["locks"] = held
            if doc["user"] is None and isinstance(doc["uid"], int):
                doc["user"] = user_of(doc["uid"])
            out.append(doc)
        return out


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """
    Per protocol: connections, opens, locks and leases (for the status header);
    rows naming the same C{state_of} holder count its opens, locks and leases once.
    """
    out: dict[str, dict[str, int]] = {}
    counted: set[tuple[str, str]] = set()
    for r in rows:
        s = out.setdefault(r["protocol"], {"connections": 0, "opens": 0, "locks": 0, "leases": 0})
        s["connections"] += 1
        holder = r.get("state_of")
        if isinstance(holder, str):
            if (r["protocol"], holder) in counted:
                continue
            counted.add((r["protocol"], holder))
        for k in ("opens", "locks", "leases"):
            v = r.get(k)
            if isinstance(v, int):
                s[k] += v
    return out
