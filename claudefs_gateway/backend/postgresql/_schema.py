# -*- test-case-name: tests.backend.test_postgresql -*-
"""
The PostgreSQL schema of C{claudefs-meta}, as numbered migrations applied at start.

Every table lives in one PostgreSQL schema (C{meta_store.postgresql.schema},
default C{claudefs}), so one database can hold several namespaces. Migrations
are plain SQL, numbered from 1; C{schema_migrations} records which ran. At
start a meta server takes a session advisory lock (so meta servers starting
together apply each migration once), applies the missing ones in order, each
in its own transaction, and refuses a database whose schema is newer than it
knows (an older meta server must not write a layout it does not understand).

Version 1, the namespace (the same rows as the embedded store's SQLite schema,
C{backend/embedded/_schema.py}):

 - C{store}: one row: the 8-byte C{instance_id} (verifiers derive from it)
   and C{epoch}, bumped by every meta server that opens the store; new
   inodes take it as their generation.
 - C{ino_seq}, C{cookie_seq}: inode numbers and directory cookies, handed out
   in blocks of L{BLOCK} (one C{nextval} per block per meta server); never
   reused, so a cookie stays an entry's place in a listing.
 - C{inode}, C{dirent}, C{xattr}, C{quota}, C{state}: as in SQLite.
 - C{usage} and C{usage_delta}: exact per-uid/gid bytes and inodes. A change
   inserts its delta rows in its own transaction (never an update of a row
   every change of that owner would wait on); readers add the deltas to the
   base row in one statement; L{FOLD_USAGE} folds deltas into C{usage} now
   and then.

Version 2, the shared state a later step moves into the meta server
(docs/postgresql.rst "Shared state"): C{client_record}, C{lock_range},
C{lock_waiter}, C{share_reservation}, C{lease}, C{grace}. Created then so that
the step would need no migration of a running cluster; nothing ever wrote them.

Version 3, the shared state of several meta servers (L{claudefs_gateway.servers.shared_pg}):
C{lock_range}, C{share_reservation} and C{lease} of version 2 are made again in
the shape the meta servers' shared state has (gateway sessions, the meta server
that wrote each row; no client records, which stay with each gateway), with
C{shared_inode} (one row per inode with locks or shares: the row a change of
that inode's locks takes C{FOR UPDATE}) and C{meta_server} (each running meta
server's boot id and when it was last seen, so the others can reap the rows of
one that died).

Version 4, the client records, their grace and the blocked lock requests of every
gateway, shared by the meta servers (L{claudefs_gateway.servers.clients_pg},
L{claudefs_gateway.servers.shared_pg}): C{client_record}, C{grace} and
C{lock_waiter} of version 2 are made again in the shape they have there, with
C{session_lost} (gateway sessions whose subscription went, not yet declared gone).
The one C{grace} row always exists: every change of client records takes it
C{FOR UPDATE} first, which orders them across meta servers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MIGRATIONS", "LATEST", "BLOCK", "apply_migrations", "FOLD_USAGE", "ROOT_INO"]

#: Inode numbers and cookies one C{nextval} hands a meta server.
BLOCK = 64
ROOT_INO = 1
#: pg_advisory_lock key of migrations: "cfs" "mig" in ASCII.
_MIGRATION_LOCK = 0x636673_6D6967

_V1 = """
CREATE TABLE store (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    instance_id bytea NOT NULL,
    epoch bigint NOT NULL
);
CREATE SEQUENCE ino_seq AS bigint START 2 INCREMENT 64;
CREATE SEQUENCE cookie_seq AS bigint START 3 INCREMENT 64;
CREATE TABLE inode (
    ino bigint PRIMARY KEY,
    gen bigint NOT NULL,
    type integer NOT NULL,
    mode integer NOT NULL,
    nlink integer NOT NULL,
    uid bigint NOT NULL,
    gid bigint NOT NULL,
    size bigint NOT NULL,
    rdev_major bigint NOT NULL,
    rdev_minor bigint NOT NULL,
    atime bigint NOT NULL,
    mtime bigint NOT NULL,
    ctime bigint NOT NULL,
    btime bigint NOT NULL,
    change bigint NOT NULL,
    parent bigint NOT NULL,
    target bytea
);
CREATE TABLE dirent (
    parent bigint NOT NULL,
    name bytea NOT NULL,
    ino bigint NOT NULL,
    type integer NOT NULL,
    cookie bigint NOT NULL,
    PRIMARY KEY (parent, name)
);
CREATE UNIQUE INDEX dirent_cookie ON dirent (parent, cookie) INCLUDE (name, ino, type);
CREATE TABLE xattr (
    ino bigint NOT NULL,
    name bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (ino, name)
);
CREATE TABLE usage (
    kind text NOT NULL,
    id bigint NOT NULL,
    bytes numeric NOT NULL,
    inodes numeric NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE usage_delta (
    kind text NOT NULL,
    id bigint NOT NULL,
    bytes numeric NOT NULL,
    inodes numeric NOT NULL
);
CREATE INDEX usage_delta_id ON usage_delta (kind, id);
CREATE TABLE quota (
    kind text NOT NULL,
    id bigint NOT NULL,
    bytes_soft numeric NOT NULL,
    bytes_hard numeric NOT NULL,
    inodes_soft numeric NOT NULL,
    inodes_hard numeric NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE state (k text PRIMARY KEY, v bytea NOT NULL);
"""

_V2 = """
-- Shared state (docs/postgresql.rst "Shared state"): designed and created, not yet used.
-- Every row names the meta server that granted it (server) so that a server's
-- rows can be found when it is declared dead, and expires (expires_at) unless renewed.
CREATE TABLE client_record (
    protocol text NOT NULL,
    client bytea NOT NULL,
    verifier bytea,
    server text NOT NULL,
    gateway_session bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    reclaim_done boolean NOT NULL DEFAULT false,
    PRIMARY KEY (protocol, client)
);
CREATE TABLE lock_range (
    id bigserial PRIMARY KEY,
    ino bigint NOT NULL,
    protocol text NOT NULL,
    client bytea NOT NULL,
    owner bytea NOT NULL,
    start_off numeric NOT NULL,
    end_off numeric,
    exclusive boolean NOT NULL,
    windows boolean NOT NULL,
    server text NOT NULL,
    FOREIGN KEY (protocol, client) REFERENCES client_record ON DELETE CASCADE
);
CREATE INDEX lock_range_ino ON lock_range (ino);
CREATE TABLE lock_waiter (
    id bigserial PRIMARY KEY,
    ino bigint NOT NULL,
    protocol text NOT NULL,
    client bytea NOT NULL,
    owner bytea NOT NULL,
    start_off numeric NOT NULL,
    end_off numeric,
    exclusive boolean NOT NULL,
    server text NOT NULL,
    gateway_session bigint NOT NULL,
    call_id bigint NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (protocol, client) REFERENCES client_record ON DELETE CASCADE
);
CREATE INDEX lock_waiter_ino ON lock_waiter (ino, id);
CREATE TABLE share_reservation (
    id bigserial PRIMARY KEY,
    ino bigint NOT NULL,
    protocol text NOT NULL,
    client bytea NOT NULL,
    owner bytea NOT NULL,
    access smallint NOT NULL,
    deny smallint NOT NULL,
    server text NOT NULL,
    FOREIGN KEY (protocol, client) REFERENCES client_record ON DELETE CASCADE
);
CREATE INDEX share_reservation_ino ON share_reservation (ino);
CREATE TABLE lease (
    id bigserial PRIMARY KEY,
    ino bigint NOT NULL,
    lease_key bytea NOT NULL UNIQUE,
    protocol text NOT NULL,
    client bytea NOT NULL,
    state smallint NOT NULL,
    breaking_to smallint,
    break_deadline timestamptz,
    epoch integer NOT NULL DEFAULT 0,
    is_dir boolean NOT NULL DEFAULT false,
    parent_key bytea,
    server text NOT NULL,
    gateway_session bigint NOT NULL,
    FOREIGN KEY (protocol, client) REFERENCES client_record ON DELETE CASCADE
);
CREATE INDEX lease_ino ON lease (ino);
CREATE TABLE grace (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    ends_at timestamptz NOT NULL
);
"""

_V3 = """
DROP TABLE lock_range;
DROP TABLE share_reservation;
DROP TABLE lease;
CREATE TABLE meta_server (
    boot text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE shared_inode (ino bigint PRIMARY KEY);
CREATE TABLE lock_range (
    id bigserial PRIMARY KEY,
    ino bigint NOT NULL,
    session bigint NOT NULL,
    protocol text NOT NULL,
    client bytea NOT NULL,
    owner bytea NOT NULL,
    start_off numeric NOT NULL,
    length numeric NOT NULL,
    exclusive boolean NOT NULL,
    server text NOT NULL
);
CREATE INDEX lock_range_ino ON lock_range (ino);
CREATE INDEX lock_range_session ON lock_range (session);
CREATE INDEX lock_range_server ON lock_range (server);
CREATE TABLE share_reservation (
    id bigserial PRIMARY KEY,
    ino bigint NOT NULL,
    session bigint NOT NULL,
    sid bigint NOT NULL,
    protocol text NOT NULL,
    client bytea NOT NULL,
    owner bytea NOT NULL,
    access smallint NOT NULL,
    deny smallint NOT NULL,
    server text NOT NULL,
    UNIQUE (session, sid)
);
CREATE INDEX share_reservation_ino ON share_reservation (ino);
CREATE INDEX share_reservation_server ON share_reservation (server);
CREATE TABLE lease (
    ino bigint NOT NULL,
    session bigint NOT NULL,
    bits integer NOT NULL,
    server text NOT NULL,
    PRIMARY KEY (ino, session)
);
CREATE INDEX lease_session ON lease (session);
CREATE INDEX lease_server ON lease (server);
"""

_V4 = """
DROP TABLE lock_waiter;
DROP TABLE grace;
DROP TABLE client_record;
CREATE TABLE client_record (
    protocol text NOT NULL,
    client bytea NOT NULL,
    session bigint NOT NULL,
    server text NOT NULL,
    reclaimable boolean NOT NULL DEFAULT false,
    PRIMARY KEY (protocol, client)
);
CREATE INDEX client_record_session ON client_record (session);
CREATE INDEX client_record_server ON client_record (server);
CREATE TABLE session_lost (
    session bigint PRIMARY KEY,
    server text NOT NULL
);
CREATE TABLE grace (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    ends_at timestamptz
);
INSERT INTO grace (one, ends_at) VALUES (true, NULL);
CREATE TABLE lock_waiter (
    session bigint NOT NULL,
    protocol text NOT NULL,
    client bytea NOT NULL,
    owner bytea NOT NULL,
    ino bigint NOT NULL,
    start_off numeric NOT NULL,
    length numeric NOT NULL,
    exclusive boolean NOT NULL,
    server text NOT NULL,
    PRIMARY KEY (session, protocol, client, owner)
);
CREATE INDEX lock_waiter_server ON lock_waiter (server);
"""

#: (version, what it does, SQL). Never edit a released one: add the next.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "namespace: inodes, entries, xattrs, usage, quotas, state", _V1),
    (2, "shared state: client records, locks, waiters, shares, leases, grace", _V2),
    (3, "shared state of several meta servers: locks, shares, leases, live servers", _V3),
    (4, "shared client records, grace and lock waiters of several meta servers", _V4),
)
LATEST = MIGRATIONS[-1][0]

#: Folds every usage delta into the base rows, dropping ids left with nothing.
FOLD_USAGE = """
WITH moved AS (DELETE FROM usage_delta RETURNING kind, id, bytes, inodes),
summed AS (
    SELECT kind, id, sum(bytes) AS bytes, sum(inodes) AS inodes FROM moved GROUP BY kind, id
)
INSERT INTO usage (kind, id, bytes, inodes) SELECT kind, id, bytes, inodes FROM summed
ON CONFLICT (kind, id) DO UPDATE
    SET bytes = usage.bytes + excluded.bytes, inodes = usage.inodes + excluded.inodes
"""
DROP_ZERO_USAGE = "DELETE FROM usage WHERE bytes = 0 AND inodes = 0"


class SchemaTooNew(Exception):
    """The database was migrated by a newer meta server than this one."""


def apply_migrations(conn: Any, schema: str) -> list[int]:
    """
    Bring C{schema} up to L{LATEST} on an autocommit connection; return the
    versions applied now. Creates the schema if missing.

    @raise SchemaTooNew: the database knows a version this code does not.
    """
    from psycopg import sql

    ident = sql.Identifier(schema)
    applied: list[int] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(sql.SQL("SET search_path TO {}").format(ident))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        newer = sorted(v for v in done if v > LATEST)
        if newer:
            raise SchemaTooNew(
                f"the database schema is at version {newer[-1]}; this meta server knows {LATEST}"
            )
        for version, description, text in MIGRATIONS:
            if version in done:
                continue
            with conn.transaction():
                conn.execute(text)
                conn.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                    (version, description),
                )
            applied.append(version)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied
