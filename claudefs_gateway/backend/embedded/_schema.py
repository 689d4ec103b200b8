# -*- test-case-name: tests.backend.test_embedded -*-
"""
The SQLite schema of the embedded store, and the row <-> value conversions
both of its connections share.

Tables (all in C{meta.sqlite3}, WAL mode):

 - C{meta}: the store's own settings: C{schema}, C{instance_id}, C{epoch}
   (bumped at every open; new inodes take it as their generation), and the
   counters C{next_ino} and C{next_cookie}, which only grow, so inode numbers
   and directory cookies are never reused.
 - C{inode}: one row per inode; directories keep their parent (for C{..} and
   the rename loop check), symlinks their target.
 - C{dirent}: C{(parent, name) -> (ino, type, cookie)}; the cookie is unique
   and increasing store-wide, so an entry's cookie is its place in a listing.
 - C{xattr}, C{usage} (exact per-uid/gid bytes and inodes), C{quota},
   C{state} (the small KV of the contract). A usage row's bytes are
   C{bytes_hi * 2**62 + bytes} with C{0 <= bytes < 2**62} (schema 3): sparse
   files may sum past 2**63, where SQLite's integer sum would turn into a
   float and lose bytes for good, while the two halves add exactly in SQL.
 - C{inline_data}: the bytes of small regular files kept in the database
   instead of a data file (schema 2): C{ino -> data}, at most the store's
   inline threshold long and never longer than the file's size (the rest of
   the size reads as zeros). A file has either an inline row or (perhaps) a
   data file: its first write makes the row if the file has no data file and
   the write ends within the threshold; a write ending beyond it moves the
   bytes to a data file, synced before the transaction that drops the row
   commits. A file once out of line stays out of line.
 - C{pending_io}: physical changes to data files (C{free}: delete the file of
   a freed inode; C{truncate}; C{punch}) recorded by a transaction and applied
   after its commit; open applies what a crash left, and the next transaction
   after the one that applied a row deletes it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from claudefs_gateway.fstypes import Attributes, FileType

__all__ = [
    "SCHEMA_VERSION",
    "INLINE_TABLE",
    "create_schema",
    "Node",
    "NODE_COLUMNS",
    "DIR_SIZE",
    "USAGE_UNIT",
    "UPSERT_USAGE",
    "usage_parts",
    "usage_total",
    "upgrade_usage",
]

# 1: the first layout; 2: adds C{inline_data}; 3: adds C{usage.bytes_hi}.
# Older stores are migrated when opened (see Engine.open and upgrade_usage).
SCHEMA_VERSION = 3
DIR_SIZE = 4096
ROOT_INO = 1

_TABLES = """
CREATE TABLE meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;
CREATE TABLE inode (
    ino INTEGER PRIMARY KEY,
    gen INTEGER NOT NULL,
    type INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    rdev_major INTEGER NOT NULL,
    rdev_minor INTEGER NOT NULL,
    atime INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    btime INTEGER NOT NULL,
    change INTEGER NOT NULL,
    parent INTEGER NOT NULL,
    target BLOB
);
CREATE TABLE dirent (
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    type INTEGER NOT NULL,
    cookie INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE UNIQUE INDEX dirent_cookie ON dirent (parent, cookie);
CREATE TABLE xattr (
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;
CREATE TABLE usage (
    kind TEXT NOT NULL,
    id INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    inodes INTEGER NOT NULL,
    bytes_hi INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE TABLE quota (
    kind TEXT NOT NULL,
    id INTEGER NOT NULL,
    bytes_soft INTEGER NOT NULL,
    bytes_hard INTEGER NOT NULL,
    inodes_soft INTEGER NOT NULL,
    inodes_hard INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE TABLE state (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE inline_data (ino INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE pending_io (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    ino INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL
);
"""

INLINE_TABLE = "CREATE TABLE inline_data (ino INTEGER PRIMARY KEY, data BLOB NOT NULL)"

#: A usage row's bytes are C{bytes_hi * USAGE_UNIT + bytes}, C{0 <= bytes < USAGE_UNIT}.
USAGE_UNIT = 1 << 62

#: Adds a change (as L{usage_parts}) to a usage row. Both low halves are
#: below 2**62, so their sum never leaves SQLite's integers; SET reads the
#: row's old values, so the carry is computed from the same sum.
UPSERT_USAGE = (
    "INSERT INTO usage (kind, id, bytes, bytes_hi, inodes) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (kind, id) DO UPDATE"
    f" SET bytes = (bytes + excluded.bytes) % {USAGE_UNIT},"
    f" bytes_hi = bytes_hi + excluded.bytes_hi + (bytes + excluded.bytes) / {USAGE_UNIT},"
    " inodes = inodes + excluded.inodes"
)


def usage_parts(total: int) -> tuple[int, int]:
    """C{(bytes, bytes_hi)} of a byte count or change, which may be negative or past 2**63."""
    return total % USAGE_UNIT, total // USAGE_UNIT


def usage_total(low: Any, high: Any) -> int:
    """The byte count of a usage row's two halves."""
    return int(high) * USAGE_UNIT + int(low)


def upgrade_usage(conn: sqlite3.Connection) -> None:
    """
    Give a store of schema 1 or 2 its C{usage.bytes_hi} and split every row's
    bytes into the two halves. A sum that had already passed 2**63 there was
    kept as a float: what it still says is kept (the bytes it lost are lost).
    """
    cols = [r[1] for r in conn.execute("PRAGMA table_info(usage)")]
    if "bytes_hi" not in cols:
        conn.execute("ALTER TABLE usage ADD COLUMN bytes_hi INTEGER NOT NULL DEFAULT 0")
    rows = conn.execute("SELECT kind, id, bytes, bytes_hi FROM usage").fetchall()
    conn.executemany(
        "UPDATE usage SET bytes = ?, bytes_hi = ? WHERE kind = ? AND id = ?",
        [(*usage_parts(usage_total(b, h)), k, i) for k, i, b, h in rows],
    )


NODE_COLUMNS = (
    "ino, gen, type, mode, nlink, uid, gid, size, rdev_major, rdev_minor,"
    " atime, mtime, ctime, btime, change, parent, target"
)


def create_schema(conn: sqlite3.Connection) -> None:
    """Create every table (inside the caller's transaction)."""
    for statement in _TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)


# A row's type column to its FileType, without the enum's call (once per row read).
_TYPES = {int(t): t for t in FileType}


class Node:
    """
    One inode row as a mutable object: operations load it, change it as the
    reference backend changes its C{_Inode}, and write it back once.
    """

    __slots__ = (
        "ino",
        "gen",
        "type",
        "mode",
        "nlink",
        "uid",
        "gid",
        "size",
        "rdev",
        "atime",
        "mtime",
        "ctime",
        "btime",
        "change",
        "parent",
        "target",
    )

    def __init__(self, row: tuple[Any, ...]) -> None:
        (
            self.ino,
            self.gen,
            t,
            self.mode,
            self.nlink,
            self.uid,
            self.gid,
            self.size,
            major,
            minor,
            self.atime,
            self.mtime,
            self.ctime,
            self.btime,
            self.change,
            self.parent,
            target,
        ) = row
        self.type = _TYPES[t]
        self.rdev = (major, minor)
        self.target: bytes = target or b""

    def row(self) -> tuple[Any, ...]:
        """Every column, in L{NODE_COLUMNS} order."""
        return (
            self.ino,
            self.gen,
            int(self.type),
            self.mode,
            self.nlink,
            self.uid,
            self.gid,
            self.size,
            self.rdev[0],
            self.rdev[1],
            self.atime,
            self.mtime,
            self.ctime,
            self.btime,
            self.change,
            self.parent,
            self.target if self.type is FileType.LNK else None,
        )

    def update_row(self) -> tuple[Any, ...]:
        """The mutable columns then C{ino}, for L{UPDATE_NODE}."""
        return (
            self.mode,
            self.nlink,
            self.uid,
            self.gid,
            self.size,
            self.atime,
            self.mtime,
            self.ctime,
            self.btime,
            self.change,
            self.parent,
            self.ino,
        )

    def attributes(self, used: int) -> Attributes:
        """
        The contract's view: directories report L{DIR_SIZE}, symlinks their
        target's length; C{used} is what the data file occupies (regular files).
        """
        t = self.type
        if t is FileType.DIR:
            size = used = DIR_SIZE
        elif t is FileType.LNK:
            size, used = len(self.target), 0
        elif t is FileType.REG:
            size = self.size
        else:
            size, used = self.size, 0
        return Attributes(
            ino=self.ino,
            gen=self.gen,
            type=t,
            mode=self.mode,
            nlink=self.nlink,
            uid=self.uid,
            gid=self.gid,
            size=size,
            used=used,
            rdev=self.rdev,
            atime_ns=self.atime,
            mtime_ns=self.mtime,
            ctime_ns=self.ctime,
            btime_ns=self.btime,
            change=self.change,
        )


SELECT_NODE = f"SELECT {NODE_COLUMNS} FROM inode WHERE ino = ?"
INSERT_NODE = f"INSERT INTO inode ({NODE_COLUMNS}) VALUES ({', '.join('?' * 17)})"
UPDATE_NODE = (
    "UPDATE inode SET mode = ?, nlink = ?, uid = ?, gid = ?, size = ?, atime = ?, mtime = ?,"
    " ctime = ?, btime = ?, change = ?, parent = ? WHERE ino = ?"
)
