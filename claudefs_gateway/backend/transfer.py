# -*- test-case-name: tests.backend.test_transfer -*-
"""
C{cfs-gateway store export|import}: move a namespace between the embedded
store and PostgreSQL, without loss, while no server uses it.

What an export carries (a directory):

 - C{namespace.sqlite3}: every row of the namespace, in the embedded store's
   columns: inodes (numbers, generations, every time including ctime, change
   counters, parents, symlink targets), directory entries with their
   cookies, xattrs, usage (summed), quota limits, the durable state keys
   (grace clocks, NSM state, the layout), and the store's instance id and
   counters. Rows, not a replay through the contract: inode numbers,
   generations and the instance id are kept, so file handles (ino and
   generation, signed with the gateways' own handle secret) and readdir
   cookies and verifiers stay valid across the move.
 - C{files/<ino>}: each regular file's bytes up to its size, sparse (holes
   stay holes), read from the embedded store's per-inode data files or from a
   data server's chunk files (the namespace's layout with one data server,
   as C{--workers} and a single C{claudefs-data} have).
 - C{manifest.json}: the format, counts, and a SHA-256 of every file's bytes
   and of every row (L{Digest}).

C{import} refuses a target that already holds a namespace, writes every row
and byte, then reads the target back and checks every checksum against the
manifest (and C{export} checks the export it wrote the same way): a move is
done only when they all match.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from claudefs_gateway.backend.embedded._files import Layout
from claudefs_gateway.backend.embedded._schema import (
    NODE_COLUMNS,
    SCHEMA_VERSION,
    create_schema,
    usage_parts,
    usage_total,
)
from claudefs_gateway.errors import GatewayError

__all__ = ["export_namespace", "import_namespace", "EmbeddedSide", "PostgresSide", "Digest"]

FORMAT = 1
BLOCK = 64 * 1024
#: Tables and their columns, in the order rows are compared (sorted by the key columns).
TABLES: dict[str, tuple[str, ...]] = {
    "inode": tuple(c.strip() for c in NODE_COLUMNS.split(",")),
    "dirent": ("parent", "name", "ino", "type", "cookie"),
    "xattr": ("ino", "name", "value"),
    "quota": ("kind", "id", "bytes_soft", "bytes_hard", "inodes_soft", "inodes_hard"),
    "state": ("k", "v"),
    "usage": ("kind", "id", "bytes", "inodes"),
}
_KEYS = {"inode": 1, "dirent": 2, "xattr": 2, "quota": 2, "state": 1, "usage": 2}
_REG = 0o100000


#: Usage rows are (kind, id, bytes, inodes) here; schema 3 stores the bytes in two halves.
_INSERT_USAGE = "INSERT INTO usage (kind, id, bytes, bytes_hi, inodes) VALUES (?, ?, ?, ?, ?)"


def _usage_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    kind, id, total, inodes = row
    return (kind, id, *usage_parts(int(total)), inodes)


class TransferError(GatewayError):
    """The move cannot be made (target not empty, source unreadable, checksums differ)."""


def _norm(v: Any) -> Any:
    if isinstance(v, memoryview | bytearray):
        return bytes(v)
    if isinstance(v, Decimal):
        return int(v)
    return v


class Digest:
    """SHA-256 of rows and of file bytes, in a canonical encoding."""

    def __init__(self) -> None:
        self.rows = hashlib.sha256()
        self.counts: dict[str, int] = {}

    def row(self, table: str, row: tuple[Any, ...]) -> None:
        self.counts[table] = self.counts.get(table, 0) + 1
        self.rows.update(repr((table, tuple(_norm(v) for v in row))).encode())

    @staticmethod
    def file(blocks: Iterator[tuple[int, bytes]], size: int) -> str:
        """The bytes of a file as (offset, data) blocks with zero blocks left out."""
        h = hashlib.sha256(str(size).encode())
        for offset, data in blocks:
            h.update(offset.to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()


def _blocks(
    read: Callable[[int, int], bytes], regions: list[tuple[int, int]], size: int
) -> Iterator[tuple[int, bytes]]:
    """Aligned L{BLOCK}s of the regions that may hold data, up to C{size}, zeros left out."""
    done = 0
    for start, end in regions:
        pos = max(start - start % BLOCK, done)
        end = min(end, size)
        while pos < end:
            n = min(BLOCK - pos % BLOCK, size - pos)
            data = read(pos, n)
            if len(data) < n:
                data += bytes(n - len(data))
            if data.count(0) != len(data):
                yield pos, data
            pos += n
        done = max(done, pos)


def _file_regions(fd: int) -> list[tuple[int, int]]:
    end = os.fstat(fd).st_size
    out, pos = [], 0
    while pos < end:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        stop = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, stop))
        pos = stop
    return out


class ChunkBytes:
    """File bytes in a data server's chunk files (its C{--data-dir})."""

    def __init__(self, root: Path) -> None:
        from claudefs_gateway.servers.data import ChunkStore

        self.store = ChunkStore(Path(root))

    def blocks(self, ino: int, size: int) -> Iterator[tuple[int, bytes]]:
        from claudefs_gateway.servers.data import CHUNK

        # The store's own listing and paths: they follow its chunk layout.
        names = self.store._chunks(ino)
        if not names:
            return
        regions = []
        for idx in names:
            fd = os.open(self.store._path(ino, idx), os.O_RDONLY)
            try:
                regions += [(idx * CHUNK + a, idx * CHUNK + b) for a, b in _file_regions(fd)]
            finally:
                os.close(fd)
        yield from _blocks(lambda o, n: self.store.read(ino, o, n)[1], regions, size)

    def write(self, ino: int, blocks: Iterator[tuple[int, bytes]]) -> None:
        wrote = False
        for offset, data in blocks:
            self.store.write(ino, offset, data, False)
            wrote = True
        if wrote:
            self.store.commit(ino)


class EmbeddedSide:
    """
    An embedded SQLite store under a data directory: the single-process
    gateway's (rows in C{meta.sqlite3}, bytes in C{data/}), or a meta
    server's whose bytes are a data server's chunk files (C{chunks}, as with
    C{--workers}: C{<data_dir>/meta} and C{<data_dir>/data}).
    """

    def __init__(self, data_dir: Path, chunks: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.db = self.data_dir / "meta.sqlite3"
        self.layout = Layout(str(self.data_dir / "data"))
        self.chunks = ChunkBytes(chunks) if chunks is not None else None

    def exists(self) -> bool:
        return self.db.exists()

    def _conn(self) -> sqlite3.Connection:
        if not self.db.exists():
            raise TransferError(f"no embedded store at {self.data_dir}")
        return sqlite3.connect(str(self.db))

    def meta(self) -> dict[str, Any]:
        with self._conn() as c:
            m = dict(c.execute("SELECT k, v FROM meta"))
        return {
            "instance_id": bytes(m["instance_id"]),
            "epoch": int(m["epoch"]),
            "next_ino": int(m["next_ino"]),
            "next_cookie": int(m["next_cookie"]),
        }

    def rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        cols = TABLES[table]
        order = ", ".join(cols[: _KEYS[table]])
        c = self._conn()
        try:
            if table == "usage":
                # Schema 3 splits the bytes in two (see _schema.USAGE_UNIT).
                have = {r[1] for r in c.execute("PRAGMA table_info(usage)")}
                hi = "bytes_hi" if "bytes_hi" in have else "0"
                q = (
                    f"SELECT kind, id, bytes, {hi}, inodes FROM usage"
                    f" WHERE bytes <> 0 OR {hi} <> 0 OR inodes <> 0 ORDER BY {order}"
                )
                for kind, id, b, h, n in c.execute(q):
                    yield kind, id, usage_total(b, h), n
            else:
                yield from c.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}")
        finally:
            c.close()

    def blocks(self, ino: int, size: int) -> Iterator[tuple[int, bytes]]:
        if self.chunks is not None:
            yield from self.chunks.blocks(ino, size)
            return
        inline = self._inline(ino)
        if inline is not None:
            # A small file's bytes kept in the database (schema 2): they win
            # over any data file a cut-short move out of line left.
            # Cut in the same canonical blocks as a data file's (L{Digest.file}).
            yield from _blocks(lambda o, n: inline[o : o + n], [(0, len(inline))], size)
            return
        try:
            fd = os.open(self.layout.path(ino), os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            yield from _blocks(lambda o, n: os.pread(fd, n, o), _file_regions(fd), size)
        finally:
            os.close(fd)

    def _inline(self, ino: int) -> bytes | None:
        c = self._conn()
        try:
            q = "SELECT 1 FROM sqlite_master WHERE name = 'inline_data'"
            if c.execute(q).fetchone() is None:
                return None  # a store of schema 1
            row = c.execute("SELECT data FROM inline_data WHERE ino = ?", (ino,)).fetchone()
        finally:
            c.close()
        return None if row is None else bytes(row[0])

    def load(
        self,
        meta: dict[str, Any],
        tables: dict[str, Iterator[tuple[Any, ...]]],
        files: Callable[[int], Iterator[tuple[int, bytes]]],
    ) -> None:
        if self.exists():
            raise TransferError(f"{self.data_dir} already holds an embedded store")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        c = sqlite3.connect(str(self.db), isolation_level=None)
        try:
            c.execute("PRAGMA journal_mode = WAL")
            c.execute("BEGIN")
            create_schema(c)
            c.executemany(
                "INSERT INTO meta (k, v) VALUES (?, ?)",
                [
                    ("schema", SCHEMA_VERSION),
                    ("instance_id", meta["instance_id"]),
                    ("epoch", meta["epoch"]),
                    ("next_ino", meta["next_ino"]),
                    ("next_cookie", meta["next_cookie"]),
                    ("syncs", 0),
                ],
            )
            regular: list[tuple[int, int]] = []
            for table, rows in tables.items():
                cols = TABLES[table]
                q = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                if table == "usage":
                    q = _INSERT_USAGE
                batch = []
                for row in rows:
                    row = tuple(_norm(v) for v in row)
                    if table == "usage":
                        row = _usage_row(row)
                    if table == "inode" and row[2] == _REG:
                        regular.append((row[0], row[7]))
                    batch.append(row)
                    if len(batch) >= 5000:
                        c.executemany(q, batch)
                        batch = []
                c.executemany(q, batch)
            Path(self.layout.root).mkdir(mode=0o700, exist_ok=True)
            for ino, _size in regular:
                if self.chunks is not None:
                    self.chunks.write(ino, files(ino))
                else:
                    self._write_file(ino, files(ino))
            c.execute("COMMIT")
        finally:
            c.close()

    def _write_file(self, ino: int, blocks: Iterator[tuple[int, bytes]]) -> None:
        fd = -1
        try:
            for offset, data in blocks:
                if fd < 0:
                    os.makedirs(self.layout.dir_of(ino), mode=0o700, exist_ok=True)
                    fd = os.open(self.layout.path(ino), os.O_RDWR | os.O_CREAT, 0o600)
                os.pwrite(fd, data, offset)
            if fd >= 0:
                os.fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)


class PostgresSide:
    """A namespace in PostgreSQL (a schema), its bytes in one data server's chunk files."""

    def __init__(self, conninfo: str, schema: str, chunks: Path | None) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self.chunks = Path(chunks) if chunks is not None else None

    def _conn(self) -> Any:
        import psycopg
        from psycopg import sql

        conn = psycopg.connect(self.conninfo, autocommit=True)
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        return conn

    def exists(self) -> bool:
        with self._conn() as c:
            found = c.execute("SELECT to_regclass('store')").fetchone()[0]
            if found is None:
                return False
            return c.execute("SELECT 1 FROM store").fetchone() is not None

    def meta(self) -> dict[str, Any]:
        with self._conn() as c:
            row = c.execute("SELECT instance_id, epoch FROM store").fetchone()
            if row is None:
                raise TransferError(f"no namespace in schema {self.schema}")
            ino = c.execute("SELECT last_value + 64 FROM ino_seq").fetchone()[0]
            cookie = c.execute("SELECT last_value + 64 FROM cookie_seq").fetchone()[0]
            top = c.execute("SELECT coalesce(max(ino), 1) + 1 FROM inode").fetchone()[0]
            topc = c.execute("SELECT coalesce(max(cookie), 2) + 1 FROM dirent").fetchone()[0]
        return {
            "instance_id": bytes(row[0]),
            "epoch": int(row[1]),
            "next_ino": max(int(ino), int(top)),
            "next_cookie": max(int(cookie), int(topc)),
        }

    def rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        cols = TABLES[table]
        # Text keys in byte order (as SQLite sorts them), whatever the database's collation.
        order = ", ".join(
            f'{k} COLLATE "C"' if k in ("kind", "k") else k for k in cols[: _KEYS[table]]
        )
        with self._conn() as c, c.transaction():
            if table == "usage":
                q = (
                    "SELECT kind, id, sum(bytes), sum(inodes) FROM ("
                    " SELECT kind, id, bytes, inodes FROM usage UNION ALL"
                    " SELECT kind, id, bytes, inodes FROM usage_delta) u GROUP BY kind, id"
                    " HAVING sum(bytes) <> 0 OR sum(inodes) <> 0"
                )
                cur = c.execute(q + f" ORDER BY {order}")
            else:
                # Byte-wise name order, as SQLite sorts blobs.
                cur = c.cursor(name="export")
                cur.itersize = 2000
                cur.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}")
            for row in cur:
                yield tuple(_norm(v) for v in row)

    def _bytes(self) -> ChunkBytes:
        if self.chunks is None:
            raise TransferError("the data server's --data-dir (--chunks) is needed for file bytes")
        return ChunkBytes(self.chunks)

    def blocks(self, ino: int, size: int) -> Iterator[tuple[int, bytes]]:
        yield from self._bytes().blocks(ino, size)

    def load(
        self,
        meta: dict[str, Any],
        tables: dict[str, Iterator[tuple[Any, ...]]],
        files: Callable[[int], Iterator[tuple[int, bytes]]],
    ) -> None:
        from claudefs_gateway.backend.postgresql._schema import apply_migrations

        chunks = self._bytes()
        with self._conn() as c:
            apply_migrations(c, self.schema)
            with c.transaction():
                c.execute("LOCK TABLE store IN EXCLUSIVE MODE")
                if c.execute("SELECT 1 FROM store").fetchone() is not None:
                    raise TransferError(f"schema {self.schema} already holds a namespace")
                c.execute(
                    "INSERT INTO store (instance_id, epoch) VALUES (%s, %s)",
                    (meta["instance_id"], meta["epoch"]),
                )
                regular: list[int] = []
                for table, rows in tables.items():
                    cols = TABLES[table]
                    with c.cursor().copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                        for row in rows:
                            if table == "inode" and row[2] == _REG:
                                regular.append(row[0])
                            copy.write_row(tuple(_norm(v) for v in row))
                c.execute("SELECT setval('ino_seq', %s, false)", (meta["next_ino"],))
                c.execute("SELECT setval('cookie_seq', %s, false)", (meta["next_cookie"],))
                for ino in regular:
                    chunks.write(ino, files(ino))


Side = EmbeddedSide | PostgresSide


def _digest_of(side: Any) -> tuple[Digest, dict[str, str]]:
    digest = Digest()
    files: dict[str, str] = {}
    for table in TABLES:
        for row in side.rows(table):
            digest.row(table, row)
            if table == "inode" and row[2] == _REG:
                files[str(row[0])] = Digest.file(side.blocks(row[0], row[7]), row[7])
    return digest, files


class ExportDir:
    """An export on disk, readable as a side of its own (rows from SQLite, bytes from files/)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.embedded = EmbeddedSide(self.path)
        self.embedded.db = self.path / "namespace.sqlite3"

    def meta(self) -> dict[str, Any]:
        return self.embedded.meta()

    def rows(self, table: str) -> Iterator[tuple[Any, ...]]:
        return self.embedded.rows(table)

    def blocks(self, ino: int, size: int) -> Iterator[tuple[int, bytes]]:
        try:
            fd = os.open(self.path / "files" / str(ino), os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            yield from _blocks(lambda o, n: os.pread(fd, n, o), _file_regions(fd), size)
        finally:
            os.close(fd)

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "manifest.json").read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError) as e:
            raise TransferError(f"{self.path} is not an export: {e}") from None


def _check(side: Any, manifest: dict[str, Any], what: str) -> dict[str, int]:
    digest, files = _digest_of(side)
    if digest.rows.hexdigest() != manifest["rows"]:
        raise TransferError(f"{what}: the rows differ from the export's checksums")
    bad = sorted(
        k for k in set(files) | set(manifest["files"]) if files.get(k) != manifest["files"].get(k)
    )
    if bad:
        raise TransferError(f"{what}: the bytes of {len(bad)} files differ (inode {bad[0]}...)")
    return digest.counts


def export_namespace(source: Any, dest: Path) -> dict[str, int]:
    """Write C{source}'s namespace to the directory C{dest} (which must not exist); the row counts."""
    dest = Path(dest)
    if dest.exists():
        raise TransferError(f"{dest} exists")
    dest.mkdir(mode=0o700, parents=True)
    out = ExportDir(dest)
    (dest / "files").mkdir(mode=0o700)
    meta = source.meta()
    c = sqlite3.connect(str(out.embedded.db), isolation_level=None)
    try:
        c.execute("BEGIN")
        create_schema(c)
        c.executemany(
            "INSERT INTO meta (k, v) VALUES (?, ?)",
            [
                ("schema", SCHEMA_VERSION),
                ("instance_id", meta["instance_id"]),
                ("epoch", meta["epoch"]),
                ("next_ino", meta["next_ino"]),
                ("next_cookie", meta["next_cookie"]),
                ("syncs", 0),
            ],
        )
        digest = Digest()
        files: dict[str, str] = {}
        for table, cols in TABLES.items():
            q = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
            for row in source.rows(table):
                row = tuple(_norm(v) for v in row)
                if table == "usage":
                    c.execute(_INSERT_USAGE, _usage_row(row))
                else:
                    c.execute(q, row)
                digest.row(table, row)
                if table == "inode" and row[2] == _REG:
                    blocks = list(source.blocks(row[0], row[7]))
                    files[str(row[0])] = Digest.file(iter(blocks), row[7])
                    if blocks:
                        fd = os.open(dest / "files" / str(row[0]), os.O_WRONLY | os.O_CREAT, 0o600)
                        try:
                            for offset, data in blocks:
                                os.pwrite(fd, data, offset)
                            os.fsync(fd)
                        finally:
                            os.close(fd)
        c.execute("COMMIT")
    finally:
        c.close()
    manifest = {
        "format": FORMAT,
        "rows": digest.rows.hexdigest(),
        "counts": digest.counts,
        "files": files,
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _check(out, manifest, "the export")
    return digest.counts


def import_namespace(src: Path, target: Any) -> dict[str, int]:
    """Load the export at C{src} into C{target} (which must hold no namespace), then verify it."""
    export = ExportDir(src)
    manifest = export.manifest()
    if manifest.get("format") != FORMAT:
        raise TransferError(f"export format {manifest.get('format')!r} is not {FORMAT}")
    _check(export, manifest, "the export")
    if target.exists():
        raise TransferError("the target already holds a namespace")
    target.load(
        export.meta(),
        {t: export.rows(t) for t in TABLES},
        lambda ino: export.blocks(ino, 2**63 - 1),
    )
    return _check(target, manifest, "the imported namespace")
