# -*- test-case-name: tests.backend.test_postgresql -*-
"""
The PostgreSQL store's operations: synchronous, one connection each, run on a
thread of the C{db} pool (or inline in tests).

Each change is one transaction at C{READ COMMITTED} with row locks, following
L{claudefs_gateway.backend.memory.MemoryBackend} (and the embedded engine,
C{backend/embedded/_engine.py}) statement by statement: the same checks in the
same order, the same times, nlink and change-counter moves.

Isolation, and why not C{SERIALIZABLE}: every create in a directory updates
that directory's row (mtime, change counter, nlink). Under C{SERIALIZABLE} (or
C{REPEATABLE READ}) two concurrent creates in one directory conflict and one
is rolled back to be retried, so a busy directory turns into a retry storm.
Under C{READ COMMITTED} the second one waits for the first's row lock and then
goes on with the row as committed, which is the semantics a file system
wants (Linux serialises a directory's changes on its inode lock the same way).
What row locks alone do not give is made explicit:

 - I{Every change to a directory's entries holds the directory's inode row
   lock} (C{SELECT ... FOR UPDATE}), taken before its entries are read, so
   the entries an operation checks cannot change before it commits.
 - An operation locks its inodes parents first, then the child it finds
   under them; where it names two inodes up front (link, rename's two
   parents) it locks them in one statement in inode order. The deadlocks
   that remain possible (a rename whose parent order crosses an rmdir's)
   are detected by PostgreSQL and the operation is run again.
 - A rename between two directories takes a transaction advisory lock first,
   so those renames run one at a time store-wide and the "would the directory
   move into its own subtree" walk up the parent chain sees a chain no other
   rename is changing (Linux takes its per-file-system rename mutex for
   exactly these renames, for the same reason).
 - Usage is not a row every change of one owner updates (all creates by one
   user would queue on it, through each commit's WAL flush): each change
   inserts its deltas, exact and in the same transaction, and readers sum.

A serialization failure or a detected deadlock runs the operation again (up
to L{TRIES} times); any other database error ends it with an L{FSError}
(L{convert_error}).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from claudefs_gateway import errors
from claudefs_gateway.backend.embedded._schema import NODE_COLUMNS, Node
from claudefs_gateway.backend.memory import MAX_LINKS, SYMLINK_MAX, check_name
from claudefs_gateway.backend.postgresql._schema import BLOCK, ROOT_INO
from claudefs_gateway.core.log import Logger
from claudefs_gateway.fstypes import (
    MAX_FILE_SIZE,
    NOW,
    XATTR_NAME_MAX,
    XATTR_SIZE_MAX,
    Attributes,
    DirEntry,
    DirPage,
    FileType,
    FSStat,
    QuotaLimits,
    RenameResult,
    SetAttrs,
    Usage,
    WriteResult,
)

__all__ = ["PgEngine", "convert_error", "TRIES", "Retry"]

TRIES = 8
_I64 = 2**63 - 1
#: pg_advisory_xact_lock key of renames between directories: "cfs" "ren".
RENAME_LOCK = 0x636673_72656E

_SELECT_NODE = f"SELECT {NODE_COLUMNS} FROM inode WHERE ino = %s"
_LOCK_NODE = _SELECT_NODE + " FOR UPDATE"
_LOCK_NODES = f"SELECT {NODE_COLUMNS} FROM inode WHERE ino = ANY(%s) ORDER BY ino FOR UPDATE"
_INSERT_NODE = f"INSERT INTO inode ({NODE_COLUMNS}) VALUES ({', '.join(['%s'] * 17)})"
_UPDATE_NODE = (
    "UPDATE inode SET mode = %s, nlink = %s, uid = %s, gid = %s, size = %s, atime = %s,"
    " mtime = %s, ctime = %s, btime = %s, change = %s, parent = %s WHERE ino = %s"
)
_I_COLUMNS = ", ".join("i." + c.strip() for c in NODE_COLUMNS.split(","))
_LOOKUP = (
    f"SELECT {_I_COLUMNS} FROM dirent d JOIN inode i ON i.ino = d.ino"
    " WHERE d.parent = %s AND d.name = %s"
)
_READDIR = (
    "SELECT cookie, name, ino, type FROM dirent WHERE parent = %s AND cookie > %s"
    " ORDER BY cookie LIMIT %s"
)
_READDIR_ATTRS = (
    f"SELECT d.cookie, d.name, {_I_COLUMNS} FROM dirent d JOIN inode i ON i.ino = d.ino"
    " WHERE d.parent = %s AND d.cookie > %s ORDER BY d.cookie LIMIT %s"
)
_USAGE = (
    "SELECT coalesce(sum(bytes), 0), coalesce(sum(inodes), 0) FROM ("
    " SELECT bytes, inodes FROM usage WHERE kind = %(k)s AND id = %(i)s"
    " UNION ALL SELECT bytes, inodes FROM usage_delta WHERE kind = %(k)s AND id = %(i)s) u"
)
_ALL_USAGE = (
    "SELECT id, sum(bytes), sum(inodes) FROM ("
    " SELECT id, bytes, inodes FROM usage WHERE kind = %(k)s"
    " UNION ALL SELECT id, bytes, inodes FROM usage_delta WHERE kind = %(k)s) u"
    " GROUP BY id HAVING sum(bytes) <> 0 OR sum(inodes) <> 0"
)


class Retry(Exception):
    """The transaction lost a race (serialization failure, deadlock): run it again."""


def convert_error(e: BaseException) -> errors.GatewayError:
    """
    The gateway error a driver exception becomes at the store's edge.

    The database unreachable, shutting down, read-only (a standby after a
    failover) or out of pooled connections: L{BackendUnavailable}, which
    clients answer with their try-later status. A statement past
    C{statement_timeout}: L{Timeout}. Out of disk: L{NoSpace}. A value out
    of range: L{Inval}. Anything else: L{IO}.
    """
    import psycopg
    from psycopg import errors as pge

    if isinstance(e, errors.GatewayError):
        return e
    if isinstance(e, pge.QueryCanceled):
        return errors.Timeout("metadata database statement timed out")
    if isinstance(e, pge.DiskFull | pge.OutOfMemory):
        return errors.NoSpace("the metadata database is out of space")
    if isinstance(e, pge.ReadOnlySqlTransaction):
        return errors.BackendUnavailable("the metadata database is read-only (a standby?)")
    if isinstance(e, psycopg.OperationalError):
        return errors.BackendUnavailable("the metadata database is unavailable")
    if isinstance(e, psycopg.DataError | OverflowError):
        return errors.Inval("value out of range")
    if isinstance(e, pge.SerializationFailure | pge.DeadlockDetected):
        return errors.BackendUnavailable("the metadata database is too busy (retries ran out)")
    return errors.IO("metadata database error")


def is_retry(e: BaseException) -> bool:
    from psycopg import errors as pge

    return isinstance(e, pge.SerializationFailure | pge.DeadlockDetected)


class _Ids:
    """Inode numbers or cookies, a block of L{BLOCK} per C{nextval} (thread-safe)."""

    def __init__(self, sequence: str) -> None:
        self.sequence = sequence
        self._lock = threading.Lock()
        self._next = 0
        self._end = 0

    def take(self, conn: Any) -> int:
        with self._lock:
            if self._next >= self._end:
                # nextval is not transactional: a block fetched by an operation
                # that then rolls back stays this server's.
                row = conn.execute(f"SELECT nextval('{self.sequence}')").fetchone()
                self._next, self._end = int(row[0]), int(row[0]) + BLOCK
            value = self._next
            self._next += 1
            return value


class Tx:
    """What one operation loaded and changed; written back only if it succeeds."""

    __slots__ = ("conn", "now", "nodes", "dirty", "new", "dropped", "usage")

    def __init__(self, conn: Any, now: int) -> None:
        self.conn = conn
        self.now = now
        self.nodes: dict[int, Node] = {}
        self.dirty: set[int] = set()
        self.new: list[Node] = []
        self.dropped: list[Node] = []
        self.usage: dict[tuple[str, int], list[int]] = {}

    def execute(self, query: str, params: Any = None) -> Any:
        return self.conn.execute(query, params)


def _int(v: Any) -> int:
    return int(v) if isinstance(v, Decimal) else v  # type: ignore[no-any-return]


class PgEngine:
    """
    The operations, each given a connection from the pool.

    @param now_ns: the clock (tests inject one).
    """

    _log = Logger()

    def __init__(self, now_ns: Callable[[], int] = time.time_ns) -> None:
        self.now = now_ns
        self.instance_id = b""
        self.epoch = 0
        self._inos = _Ids("ino_seq")
        self._cookies = _Ids("cookie_seq")
        self._iid = 0
        #: Whose device statfs reports bytes of (the gateway adds the data servers' instead).
        self.statfs_path = "/"

    # -- lifecycle --------------------------------------------------------------------

    def open(self, conn: Any) -> bytes:
        """Create the root on first use, bump the epoch; the store's instance id."""
        with conn.transaction():
            row = conn.execute("SELECT instance_id, epoch FROM store FOR UPDATE").fetchone()
            if row is None:
                now = self.now()
                iid = os.urandom(8)
                conn.execute("INSERT INTO store (instance_id, epoch) VALUES (%s, 0)", (iid,))
                root: tuple[Any, ...] = (ROOT_INO, 1, int(FileType.DIR), 0o755, 2, 0, 0, 0, 0, 0)
                root += (now, now, now, now, 1, 1, None)
                conn.execute(_INSERT_NODE, root)
                conn.execute(
                    "INSERT INTO usage (kind, id, bytes, inodes)"
                    " VALUES ('user', 0, 0, 1), ('group', 0, 0, 1)"
                )
                row = (iid, 0)
            self.instance_id = bytes(row[0])
            self.epoch = int(row[1]) + 1
            conn.execute("UPDATE store SET epoch = %s", (self.epoch,))
        self._iid = int.from_bytes(self.instance_id, "big")
        return self.instance_id

    # -- running ----------------------------------------------------------------------

    def change(
        self,
        conn: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        durable: bool,
        begun: list[bool] | None = None,
    ) -> Any:
        """
        Run one change in its own transaction; a lost race runs it again.

        @param begun: set to C{[True]} once the transaction has begun (before
            that, a broken connection has done nothing and the change may be
            sent on another).
        """
        for attempt in range(TRIES):
            try:
                with conn.transaction():
                    if begun is not None and not begun:
                        begun.append(True)
                    if not durable:
                        # An unstable write's metadata: durable by the next
                        # synchronous commit (any COMMIT_META flushes the WAL past it).
                        conn.execute("SET LOCAL synchronous_commit TO OFF")
                    tx = Tx(conn, self.now())
                    value = fn(self, tx, *args)
                    self._write_back(tx)
                return value
            except Exception as e:
                if is_retry(e) and attempt + 1 < TRIES:
                    self._log.debug("metadata transaction retried: {why}", why=type(e).__name__)
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- helpers (mirroring the embedded engine's) ------------------------------------

    def _get(self, tx: Tx, ino: int) -> Node:
        node = tx.nodes.get(ino)
        if node is not None:
            return node
        row = tx.execute(_LOCK_NODE, (ino,)).fetchone() if 0 < ino <= _I64 else None
        if row is None:
            raise errors.NotFound(f"inode {ino}")
        node = tx.nodes[ino] = Node(row)
        return node

    def _lock(self, tx: Tx, *inos: int) -> None:
        """Lock several inodes at once, in inode order (those that exist)."""
        want = sorted({i for i in inos if 0 < i <= _I64 and i not in tx.nodes})
        if len(want) < 2:
            return
        for row in tx.execute(_LOCK_NODES, (want,)).fetchall():
            tx.nodes[row[0]] = Node(row)

    def _dir(self, tx: Tx, ino: int) -> Node:
        node = self._get(tx, ino)
        if node.type is not FileType.DIR:
            raise errors.NotDir(f"inode {ino}")
        return node

    def _file(self, tx: Tx, ino: int) -> Node:
        node = self._get(tx, ino)
        if node.type is FileType.DIR:
            raise errors.IsDir("is a directory")
        if node.type is not FileType.REG:
            raise errors.Inval("not a regular file")
        return node

    def _lookup_entry(self, tx: Tx, parent: int, name: bytes) -> int | None:
        row = tx.execute(
            "SELECT ino FROM dirent WHERE parent = %s AND name = %s", (parent, name)
        ).fetchone()
        return None if row is None else int(row[0])

    def _entry(self, tx: Tx, d: Node, name: bytes) -> Node:
        check_name(name)
        ino = self._lookup_entry(tx, d.ino, name)
        if ino is None:
            raise errors.NotFound("no such name")
        return self._get(tx, ino)

    def _has_entries(self, tx: Tx, ino: int) -> bool:
        return (
            tx.execute("SELECT 1 FROM dirent WHERE parent = %s LIMIT 1", (ino,)).fetchone()
            is not None
        )

    @staticmethod
    def _attrs(node: Node) -> Attributes:
        # File bytes live on the data servers; the meta server reports none used.
        return node.attributes(0)

    def _touch(self, tx: Tx, node: Node, mtime: bool = True) -> None:
        node.ctime = tx.now
        if mtime:
            node.mtime = tx.now
        node.change += 1
        tx.dirty.add(node.ino)

    def _account(self, tx: Tx, node: Node, inodes: int = 0, size: int = 0) -> None:
        for key in (("user", node.uid), ("group", node.gid)):
            u = tx.usage.setdefault(key, [0, 0])
            u[0] += size
            u[1] += inodes

    def _make(
        self,
        tx: Tx,
        type: FileType,
        mode: int,
        uid: int,
        gid: int,
        rdev: tuple[int, int],
        parent: int = 0,
        target: bytes | None = None,
    ) -> Node:
        now = tx.now
        ino = self._inos.take(tx.conn)
        nlink = 2 if type is FileType.DIR else 1
        node = Node(
            (ino, self.epoch, int(type), mode & 0o7777, nlink, uid, gid, 0)
            + (rdev[0], rdev[1], now, now, now, now, 1, parent, target)
        )
        tx.nodes[ino] = node
        tx.new.append(node)
        self._account(tx, node, inodes=1)
        return node

    def _add_entry(self, tx: Tx, parent: Node, name: bytes, node: Node) -> None:
        # Taken under the parent's row lock: cookies grow in the order entries are added.
        cookie = self._cookies.take(tx.conn)
        tx.execute(
            "INSERT INTO dirent (parent, name, ino, type, cookie) VALUES (%s, %s, %s, %s, %s)",
            (parent.ino, name, node.ino, int(node.type), cookie),
        )
        self._touch(tx, parent)

    def _del_entry(self, tx: Tx, parent: Node, name: bytes) -> None:
        tx.execute("DELETE FROM dirent WHERE parent = %s AND name = %s", (parent.ino, name))

    def _drop(self, tx: Tx, node: Node) -> None:
        self._account(tx, node, inodes=-1, size=-node.size if node.type is FileType.REG else 0)
        tx.dropped.append(node)

    def _write_back(self, tx: Tx) -> None:
        new = {n.ino for n in tx.new}
        gone = {n.ino for n in tx.dropped}
        cur = tx.conn.cursor()
        rows = [n.row() for n in tx.new if n.ino not in gone]
        if rows:
            cur.executemany(_INSERT_NODE, rows)
        updates = [tx.nodes[i].update_row() for i in tx.dirty if i not in new and i not in gone]
        if updates:
            cur.executemany(_UPDATE_NODE, updates)
        for node in tx.dropped:
            if node.ino not in new:
                cur.execute("DELETE FROM inode WHERE ino = %s", (node.ino,))
                cur.execute("DELETE FROM xattr WHERE ino = %s", (node.ino,))
        deltas = [(k, i, b, n) for (k, i), (b, n) in tx.usage.items() if b or n]
        if deltas:
            cur.executemany(
                "INSERT INTO usage_delta (kind, id, bytes, inodes) VALUES (%s, %s, %s, %s)", deltas
            )

    # -- reads (single statements, no transaction of their own) ------------------------

    def _node(self, conn: Any, ino: int) -> Node:
        row = conn.execute(_SELECT_NODE, (ino,)).fetchone() if 0 < ino <= _I64 else None
        if row is None:
            raise errors.NotFound(f"inode {ino}")
        return Node(row)

    def getattr(self, conn: Any, ino: int) -> Attributes:
        return self._attrs(self._node(conn, ino))

    def lookup(self, conn: Any, parent: int, name: bytes) -> Attributes:
        if name in (b".", b".."):
            d = self._node(conn, parent)
            if d.type is not FileType.DIR:
                raise errors.NotDir(f"inode {parent}")
            return self._attrs(d if name == b"." else self._node(conn, d.parent))
        if not 0 < parent <= _I64:
            raise errors.NotFound(f"inode {parent}")
        row = conn.execute(_LOOKUP, (parent, name)).fetchone()
        if row is not None:
            return self._attrs(Node(row))
        # Not there: say why in the contract's order (no such inode, not a directory).
        d = self._node(conn, parent)
        if d.type is not FileType.DIR:
            raise errors.NotDir(f"inode {parent}")
        raise errors.NotFound("no such name")

    def verifier(self, ino: int) -> bytes:
        """Cookies are never reused, so a directory's verifier never has to change."""
        return (ino ^ self._iid).to_bytes(8, "big")

    def readdir(
        self, conn: Any, dir: int, cookie: int, verifier: bytes, count: int, with_attrs: bool
    ) -> DirPage:
        d = self._node(conn, dir)
        if d.type is not FileType.DIR:
            raise errors.NotDir(f"inode {dir}")
        verf = self.verifier(d.ino)
        if cookie != 0 and verifier != verf:
            raise errors.BadCookie("cookie verifier mismatch")
        if cookie in (1, 2):
            raise errors.BadCookie("cookie reserved for . and ..")
        count = max(min(count, 2**31), 0)
        after = max(min(cookie, _I64), -1)
        entries: list[DirEntry] = []
        if with_attrs:
            rows = conn.execute(_READDIR_ATTRS, (dir, after, count + 1)).fetchall()
            for row in rows[:count]:
                node = Node(row[2:])
                entries.append(
                    DirEntry(bytes(row[1]), node.ino, node.type, row[0], self._attrs(node))
                )
        else:
            rows = conn.execute(_READDIR, (dir, after, count + 1)).fetchall()
            for c, name, ino, t in rows[:count]:
                entries.append(DirEntry(bytes(name), ino, FileType(t), c))
        return DirPage(tuple(entries), verf, eof=len(rows) <= count)

    def readlink(self, conn: Any, ino: int) -> bytes:
        node = self._node(conn, ino)
        if node.type is not FileType.LNK:
            raise errors.Inval("not a symlink")
        return bytes(node.target)

    def statfs(self, conn: Any) -> FSStat:
        # Bytes are the data servers' (the gateway adds theirs up); inodes are
        # bounded by nothing but 64 bits: report a large fixed pool, less an
        # estimate of those in use (a count(*) of a big table is too slow here).
        row = conn.execute(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'inode'::regclass"
        ).fetchone()
        used = int(row[0]) if row else 0
        total = 2**40
        st = os.statvfs(self.statfs_path)
        return FSStat(
            total_bytes=st.f_blocks * st.f_frsize,
            free_bytes=st.f_bfree * st.f_frsize,
            avail_bytes=st.f_bavail * st.f_frsize,
            total_files=total,
            free_files=total - used,
            avail_files=total - used,
            block_size=st.f_bsize,
        )

    def getxattr(self, conn: Any, ino: int, name: bytes) -> bytes:
        self._node(conn, ino)
        _check_xattr_name(name)
        row = conn.execute(
            "SELECT value FROM xattr WHERE ino = %s AND name = %s", (ino, name)
        ).fetchone()
        if row is None:
            raise errors.NoData("no such xattr")
        return bytes(row[0])

    def listxattr(self, conn: Any, ino: int) -> list[bytes]:
        self._node(conn, ino)
        rows = conn.execute("SELECT name FROM xattr WHERE ino = %s ORDER BY name", (ino,))
        return [bytes(r[0]) for r in rows]

    def usage(self, conn: Any, kind: str, id: int) -> Usage:
        if not 0 <= id <= _I64:
            return Usage(0, 0)
        b, n = conn.execute(_USAGE, {"k": kind, "i": id}).fetchone()
        return Usage(_int(b), _int(n))

    def all_usage(self, conn: Any, kind: str) -> dict[int, Usage]:
        rows = conn.execute(_ALL_USAGE, {"k": kind})
        return {int(i): Usage(_int(b), _int(n)) for i, b, n in rows}

    def get_quota(self, conn: Any, kind: str, id: int) -> QuotaLimits | None:
        if not 0 <= id <= _I64:
            return None
        row = conn.execute(
            "SELECT bytes_soft, bytes_hard, inodes_soft, inodes_hard FROM quota"
            " WHERE kind = %s AND id = %s",
            (kind, id),
        ).fetchone()
        return QuotaLimits(*map(_int, row)) if row is not None else None

    def list_quotas(self, conn: Any, kind: str) -> dict[int, QuotaLimits]:
        rows = conn.execute(
            "SELECT id, bytes_soft, bytes_hard, inodes_soft, inodes_hard FROM quota"
            " WHERE kind = %s",
            (kind,),
        )
        return {int(r[0]): QuotaLimits(*map(_int, r[1:])) for r in rows}

    def get_state(self, conn: Any, key: str) -> bytes | None:
        row = conn.execute("SELECT v FROM state WHERE k = %s", (key,)).fetchone()
        return bytes(row[0]) if row is not None else None

    # -- changes ------------------------------------------------------------------------

    def op_create(
        self,
        tx: Tx,
        parent: int,
        name: bytes,
        type: FileType,
        mode: int,
        uid: int,
        gid: int,
        rdev: tuple[int, int] = (0, 0),
    ) -> Attributes:
        d = self._dir(tx, parent)
        check_name(name)
        type = FileType(type)
        if type is FileType.LNK:
            raise errors.Inval("use symlink")
        if self._lookup_entry(tx, parent, name) is not None:
            raise errors.Exists("name exists")
        node = self._make(
            tx,
            type,
            mode,
            uid,
            gid,
            rdev if type in (FileType.BLK, FileType.CHR) else (0, 0),
            parent=parent if type is FileType.DIR else 0,
        )
        if type is FileType.DIR:
            d.nlink += 1
        self._add_entry(tx, d, name, node)
        return self._attrs(node)

    def op_symlink(
        self, tx: Tx, parent: int, name: bytes, target: bytes, mode: int, uid: int, gid: int
    ) -> Attributes:
        d = self._dir(tx, parent)
        check_name(name)
        if not target or len(target) > SYMLINK_MAX or b"\x00" in target:
            raise errors.Inval("bad symlink target")
        if self._lookup_entry(tx, parent, name) is not None:
            raise errors.Exists("name exists")
        node = self._make(tx, FileType.LNK, mode, uid, gid, (0, 0), target=bytes(target))
        self._add_entry(tx, d, name, node)
        return self._attrs(node)

    def op_link(self, tx: Tx, ino: int, parent: int, name: bytes) -> Attributes:
        self._lock(tx, ino, parent)
        node = self._get(tx, ino)
        d = self._dir(tx, parent)
        check_name(name)
        if node.type is FileType.DIR:
            raise errors.Perm("hard link to a directory")
        if self._lookup_entry(tx, parent, name) is not None:
            raise errors.Exists("name exists")
        if node.nlink >= MAX_LINKS:
            raise errors.MLink("too many links")
        node.nlink += 1
        self._touch(tx, node, mtime=False)
        self._add_entry(tx, d, name, node)
        return self._attrs(node)

    def op_unlink(self, tx: Tx, parent: int, name: bytes) -> Attributes:
        d = self._dir(tx, parent)
        node = self._entry(tx, d, name)
        if node.type is FileType.DIR:
            raise errors.IsDir("is a directory")
        self._del_entry(tx, d, name)
        self._touch(tx, d)
        node.nlink -= 1
        self._touch(tx, node, mtime=False)
        after = self._attrs(node)
        if node.nlink == 0:
            self._drop(tx, node)
        return after

    def op_rmdir(self, tx: Tx, parent: int, name: bytes) -> Attributes:
        d = self._dir(tx, parent)
        node = self._entry(tx, d, name)
        if node.type is not FileType.DIR:
            raise errors.NotDir("not a directory")
        if self._has_entries(tx, node.ino):
            raise errors.NotEmpty("directory not empty")
        self._del_entry(tx, d, name)
        d.nlink -= 1
        self._touch(tx, d)
        node.nlink = 0
        after = self._attrs(node)
        self._drop(tx, node)
        return after

    def _is_ancestor(self, tx: Tx, ancestor: int, ino: int) -> bool:
        # Parent pointers change only in renames between directories, which hold
        # RENAME_LOCK as this walk does: plain reads suffice (no row locks).
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT_INO:
                return False
            node = tx.nodes.get(ino)
            if node is not None:
                ino = node.parent
                continue
            row = tx.execute("SELECT parent FROM inode WHERE ino = %s", (ino,)).fetchone()
            if row is None:
                return False
            ino = int(row[0])

    def op_rename(
        self, tx: Tx, src_parent: int, src_name: bytes, dst_parent: int, dst_name: bytes
    ) -> RenameResult:
        if src_parent != dst_parent:
            tx.execute("SELECT pg_advisory_xact_lock(%s)", (RENAME_LOCK,))
            self._lock(tx, src_parent, dst_parent)
        sd = self._dir(tx, src_parent)
        dd = self._dir(tx, dst_parent)
        node = self._entry(tx, sd, src_name)
        check_name(dst_name)
        existing = self._lookup_entry(tx, dst_parent, dst_name)
        if existing is not None and existing == node.ino:
            return RenameResult(self._attrs(node), None)
        if node.type is FileType.DIR and self._is_ancestor(tx, node.ino, dst_parent):
            raise errors.Inval("rename into own subtree")
        replaced: Node | None = None
        if existing is not None:
            replaced = self._get(tx, existing)
            if node.type is FileType.DIR:
                if replaced.type is not FileType.DIR:
                    raise errors.NotDir("directory over non-directory")
                if self._has_entries(tx, replaced.ino):
                    raise errors.NotEmpty("destination not empty")
            elif replaced.type is FileType.DIR:
                raise errors.IsDir("non-directory over directory")
        self._del_entry(tx, sd, src_name)
        self._touch(tx, sd)
        replaced_after = None
        if replaced is not None:
            self._del_entry(tx, dd, dst_name)
            if replaced.type is FileType.DIR:
                dd.nlink -= 1
                replaced.nlink = 0
            else:
                replaced.nlink -= 1
            self._touch(tx, replaced, mtime=False)
            replaced_after = self._attrs(replaced)
            if replaced.nlink == 0:
                self._drop(tx, replaced)
        self._add_entry(tx, dd, dst_name, node)
        if node.type is FileType.DIR and src_parent != dst_parent:
            sd.nlink -= 1
            dd.nlink += 1
            node.parent = dst_parent
        self._touch(tx, node, mtime=False)
        return RenameResult(self._attrs(node), replaced_after)

    def op_setattr(
        self, tx: Tx, ino: int, changes: SetAttrs, guard_ctime_ns: int | None = None
    ) -> Attributes:
        node = self._get(tx, ino)
        if guard_ctime_ns is not None and guard_ctime_ns != node.ctime:
            raise errors.Inval("ctime guard mismatch")
        if changes.size is not None:
            if node.type is FileType.DIR:
                raise errors.IsDir("size of a directory")
            if node.type is not FileType.REG:
                raise errors.Inval("size of a non-regular file")
            if not 0 <= changes.size <= MAX_FILE_SIZE:
                raise errors.FBig("size too large")
            if changes.size == node.size and changes == SetAttrs(size=changes.size):
                # Truncating to the current size alone changes nothing (POSIX
                # ftruncate; RFC 5661 18.30.4): no row is written.
                return self._attrs(node)
        now = tx.now
        if changes.uid is not None or changes.gid is not None:
            size = node.size if node.type is FileType.REG else 0
            self._account(tx, node, inodes=-1, size=-size)
            if changes.uid is not None:
                node.uid = changes.uid
            if changes.gid is not None:
                node.gid = changes.gid
            self._account(tx, node, inodes=1, size=size)
        if changes.mode is not None:
            node.mode = changes.mode & 0o7777
        if changes.size is not None:
            if changes.size != node.size:
                self._account(tx, node, size=changes.size - node.size)
                node.size = changes.size
            node.mtime = now
        if changes.atime is not None:
            node.atime = now if changes.atime is NOW else int(changes.atime)  # type: ignore[arg-type]
        if changes.mtime is not None:
            node.mtime = now if changes.mtime is NOW else int(changes.mtime)  # type: ignore[arg-type]
        if changes.btime is not None:
            node.btime = now if changes.btime is NOW else int(changes.btime)  # type: ignore[arg-type]
        node.ctime = now
        node.change += 1
        tx.dirty.add(node.ino)
        return self._attrs(node)

    def op_setxattr(
        self, tx: Tx, ino: int, name: bytes, value: bytes, create: bool | None = None
    ) -> None:
        node = self._get(tx, ino)
        _check_xattr_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise errors.Range("xattr value too large")
        exists = (
            tx.execute("SELECT 1 FROM xattr WHERE ino = %s AND name = %s", (ino, name)).fetchone()
            is not None
        )
        if create is True and exists:
            raise errors.Exists("xattr exists")
        if create is False and not exists:
            raise errors.NoData("no such xattr")
        tx.execute(
            "INSERT INTO xattr (ino, name, value) VALUES (%s, %s, %s)"
            " ON CONFLICT (ino, name) DO UPDATE SET value = excluded.value",
            (ino, bytes(name), bytes(value)),
        )
        self._touch(tx, node, mtime=False)

    def op_removexattr(self, tx: Tx, ino: int, name: bytes) -> None:
        node = self._get(tx, ino)
        _check_xattr_name(name)
        row = tx.execute(
            "DELETE FROM xattr WHERE ino = %s AND name = %s RETURNING 1", (ino, name)
        ).fetchone()
        if row is None:
            raise errors.NoData("no such xattr")
        self._touch(tx, node, mtime=False)

    def op_set_quota(self, tx: Tx, kind: str, id: int, limits: QuotaLimits | None) -> None:
        if not 0 <= id <= _I64:
            raise errors.Inval("id out of range")
        if limits is None:
            tx.execute("DELETE FROM quota WHERE kind = %s AND id = %s", (kind, id))
            return
        tx.execute(
            "INSERT INTO quota (kind, id, bytes_soft, bytes_hard, inodes_soft, inodes_hard)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (kind, id) DO UPDATE SET"
            " bytes_soft = excluded.bytes_soft, bytes_hard = excluded.bytes_hard,"
            " inodes_soft = excluded.inodes_soft, inodes_hard = excluded.inodes_hard",
            (
                kind,
                id,
                limits.bytes_soft,
                limits.bytes_hard,
                limits.inodes_soft,
                limits.inodes_hard,
            ),
        )

    def op_set_state(self, tx: Tx, key: str, value: bytes | None) -> None:
        if value is None:
            tx.execute("DELETE FROM state WHERE k = %s", (key,))
        else:
            tx.execute(
                "INSERT INTO state (k, v) VALUES (%s, %s)"
                " ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                (key, bytes(value)),
            )

    def op_wrote(
        self, tx: Tx, ino: int, offset: int, length: int, what: int, mtime_ns: int = 0
    ) -> WriteResult:
        """The metadata half of a write (0), allocate (1) or deallocate (2): see the embedded engine."""
        node = self._file(tx, ino)
        if offset < 0 or (what != 0 and length <= 0) or length < 0:
            raise errors.Inval("bad range")
        end = offset + length
        if what != 2 and end > MAX_FILE_SIZE:
            raise errors.FBig("file too large")
        before = self._attrs(node)
        if what == 0 and length == 0:
            return WriteResult(0, True, before, before)
        if what != 2 and end > node.size:
            self._account(tx, node, size=end - node.size)
            node.size = end
        times = (node.mtime, node.ctime)
        self._touch(tx, node, mtime=what != 1)
        if mtime_ns > 0 and what == 0:
            # The time the writing gateway gave its client (write-behind:
            # docs/workers.rst), so the store holds what the client was told;
            # never back (its WROTEs may arrive out of order on several
            # connections: the last write's time stays).
            node.mtime = max(times[0], mtime_ns)
            node.ctime = max(times[1], mtime_ns)
        return WriteResult(length if what == 0 else 0, True, self._attrs(node), before)

    def op_commit(self, tx: Tx, ino: int) -> Attributes:
        node = self._file(tx, ino)
        # A write in a synchronous commit flushes the WAL through every earlier
        # asynchronous commit (unstable writes' metadata, through any meta
        # server): the row is rewritten unchanged, which is such a write.
        tx.execute("UPDATE inode SET change = change WHERE ino = %s", (ino,))
        return self._attrs(node)


def _check_xattr_name(name: bytes) -> None:
    if not name or b"\x00" in name:
        raise errors.Inval("bad xattr name")
    if len(name) > XATTR_NAME_MAX:
        raise errors.Range("xattr name too long")
