# -*- test-case-name: tests.smb.test_files -*-
"""
QUERY_DIRECTORY and CHANGE_NOTIFY (MS-SMB2 3.3.5.18, 3.3.5.19): directory
listings and change notification from the vfs change events.
"""

from __future__ import annotations

import struct
from codecs import utf_16_le_encode as utf16_encode
from typing import Any

from twisted.internet import defer

from claudefs_gateway import errors
from claudefs_gateway.fstypes import Attributes
from claudefs_gateway.smb import constants as c
from claudefs_gateway.smb import ntstatus as st
from claudefs_gateway.smb.errors import SMBError
from claudefs_gateway.smb.filebase import FileBase, decode_name
from claudefs_gateway.smb.info import DIRECTORY_CLASSES, matches, pack_dir_entry
from claudefs_gateway.smb.messages import (
    ChangeNotifyRequest,
    QueryDirectoryRequest,
    pack_buffer_response,
)
from claudefs_gateway.smb.state import DirScan, Open, Reply, Request, Watch
from claudefs_gateway.vfs import Action, Caller, Change
from claudefs_gateway.vfs.events import What

__all__ = ["DirectoryCommands"]

MAX_NOTIFY_QUEUE = 256


#: What each kind of modification means to a CHANGE_NOTIFY completion filter (MS-FSCC 2.4.42 / MS-SMB2 2.2.35).
_NOTIFY_BITS: tuple[tuple[What, int], ...] = (
    (What.DATA, c.FILE_NOTIFY_CHANGE_LAST_WRITE),
    (What.SIZE, c.FILE_NOTIFY_CHANGE_SIZE),
    (What.ATTRIBUTES, c.FILE_NOTIFY_CHANGE_ATTRIBUTES),
    (What.SECURITY, c.FILE_NOTIFY_CHANGE_SECURITY),
    (
        What.TIMES,
        c.FILE_NOTIFY_CHANGE_LAST_WRITE
        | c.FILE_NOTIFY_CHANGE_LAST_ACCESS
        | c.FILE_NOTIFY_CHANGE_CREATION,
    ),
    (What.XATTR, c.FILE_NOTIFY_CHANGE_EA),
)


def _notify_bits(what: What) -> int:
    """The completion-filter bits a "modified" change matches (every non-name bit if unknown)."""
    bits = 0
    for flag, mask in _NOTIFY_BITS:
        if what & flag:
            bits |= mask
    if not bits:
        bits = ~(c.FILE_NOTIFY_CHANGE_FILE_NAME | c.FILE_NOTIFY_CHANGE_DIR_NAME)
    return bits


class DirectoryCommands(FileBase):
    """QUERY_DIRECTORY and CHANGE_NOTIFY."""

    # -- QUERY_DIRECTORY ------------------------------------------------------------------------

    async def smb_QUERY_DIRECTORY(self, conn: Any, req: Request) -> Reply | bytes:
        body = QueryDirectoryRequest.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        if not op.is_dir or op.pipe is not None:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "QUERY_DIRECTORY on a file")
        if body.info_class not in DIRECTORY_CLASSES:
            raise SMBError(st.STATUS_INVALID_INFO_CLASS)
        if not op.access & c.FILE_LIST_DIRECTORY:
            raise SMBError(st.STATUS_ACCESS_DENIED, "no list access")
        limit = min(body.output_length, self.factory.max_io)
        if limit == 0:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "zero OutputBufferLength")
        pattern = body.pattern or "*"
        if len(pattern) > 255:
            raise SMBError(st.STATUS_OBJECT_NAME_INVALID)
        scan = op.scan
        if scan is None or body.flags & (c.SMB2_RESTART_SCANS | c.SMB2_REOPEN):
            scan = op.scan = DirScan(pattern=pattern)
        elif not scan.started:
            scan.pattern = pattern
        single = bool(body.flags & c.SMB2_RETURN_SINGLE_ENTRY)
        caller = op.tree.caller
        out = bytearray()
        last_start = -1
        count = 0
        while True:
            if not scan.buffered:
                if not await self._fill(caller, op, scan):
                    break
            name, st_ = scan.buffered[0]
            entry = pack_dir_entry(body.info_class, st_, name)
            start = (len(out) + 7) & ~7
            if start + len(entry) > limit:
                if count == 0:
                    raise SMBError(st.STATUS_INFO_LENGTH_MISMATCH, "buffer too small for one entry")
                break
            scan.buffered.popleft()
            if last_start >= 0:
                out += b"\x00" * (start - len(out))
                struct.pack_into("<I", out, last_start, start - last_start)
            last_start = len(out)
            out += entry
            count += 1
            if single:
                break
        if count == 0:
            first = not scan.returned_any
            scan.returned_any = True
            raise SMBError(st.STATUS_NO_SUCH_FILE if first else st.STATUS_NO_MORE_FILES)
        scan.returned_any = True
        return bytes(pack_buffer_response(bytes(out)))

    async def _fill(self, caller: Caller, op: Open, scan: DirScan) -> bool:
        """Buffer the next matching entries; False at the end of the directory."""
        vfs = self.vfs
        assert op.node is not None
        ino = op.node.ino
        scan.started = True
        if not scan.dots_done:
            scan.dots_done = True
            # (Wildcards looked for first: a regex per exact name is not compiled.)
            if scan.pattern and not any(ch in scan.pattern for ch in '*?<>"'):
                # An exact name: one lookup instead of a scan (Windows asks this way a lot).
                scan.eof = True
                name = scan.pattern
                if name in (".", ".."):
                    pass
                else:
                    try:
                        a, raw = await self.lookup_name(
                            caller, ino, name.encode("utf-8", "surrogatepass")
                        )
                    except (errors.NotFound, errors.NameTooLong, errors.Inval):
                        return False
                    name = raw.decode("utf-8", "surrogatepass")
                    if a.is_link:
                        target = await self._follow(caller, op, raw)
                        if target is None:
                            return False
                        a = target
                    scan.buffered.append((name, await self.stat(caller, a, raw)))
                    return True
            here = await vfs.getattr(caller, ino)
            up = await vfs.lookup(caller, ino, b"..")
            for name, dot in ((".", here), ("..", up)):
                if matches(scan.pattern, name):
                    scan.buffered.append((name, await self.stat(caller, dot)))
            if scan.buffered:
                return True
        while not scan.buffered:
            if scan.eof:
                return False
            try:
                page = await vfs.readdir(caller, ino, scan.cookie, scan.verifier, 256, True)
            except errors.BadCookie:
                # The directory changed under us: start over after what we had (best effort).
                scan.cookie, scan.verifier = 0, b"\x00" * 8
                page = await vfs.readdir(caller, ino, 0, scan.verifier, 256, True)
            scan.verifier = page.verifier
            scan.eof = page.eof
            for e in page.entries:
                scan.cookie = e.cookie
                decoded = decode_name(e.name)
                if decoded is None or not matches(scan.pattern, decoded):
                    continue
                if e.attrs is not None:
                    a = e.attrs
                else:
                    try:
                        a = await vfs.getattr(caller, e.ino)
                    except errors.NotFound:
                        continue
                if a.is_link:
                    target = await self._follow(caller, op, e.name)
                    if target is None:
                        continue
                    a = target
                scan.buffered.append((decoded, await self.stat(caller, a, e.name)))
            if not page.entries and not page.eof:
                return False
        return True

    async def _follow(self, caller: Caller, op: Open, name: bytes) -> Attributes | None:
        """
        The attributes of what a symbolic link in the open directory points to
        (None if it dangles): SMB clients see the target, as Samba shows them.
        """
        assert op.node is not None
        base = op.node.path.replace("\\", "/").encode("utf-8", "surrogatepass")
        try:
            a: Attributes = await self.vfs.resolve(caller, base + b"/" + name)
        except errors.FSError:
            return None
        return a

    # -- CHANGE_NOTIFY ------------------------------------------------------------------------------

    async def smb_CHANGE_NOTIFY(self, conn: Any, req: Request) -> Reply | bytes:
        body = ChangeNotifyRequest.parse(req.raw)
        op = self.lookup_open(conn, req, body.file_id)
        if not op.is_dir or op.pipe is not None:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "CHANGE_NOTIFY on a file")
        if not op.access & c.FILE_LIST_DIRECTORY:
            raise SMBError(st.STATUS_ACCESS_DENIED)
        watch = op.watch
        if body.completion_filter == 0 and watch is None:
            # Only the first request fixes the filter: later ones may pass 0.
            raise SMBError(st.STATUS_INVALID_PARAMETER, "empty CompletionFilter")
        if body.output_length > self.factory.max_io:
            raise SMBError(st.STATUS_INVALID_PARAMETER, "OutputBufferLength over MaxTransactSize")
        if watch is None:
            # Windows fixes the filter, the tree flag and the buffer at the first
            # request on a handle (smbtorture smb2.notify.valid-req, mask-change).
            watch = op.watch = Watch(tree=bool(body.flags & c.SMB2_WATCH_TREE))
            watch.filter = body.completion_filter
            watch.limit = body.output_length
            watch.unsubscribe = self.vfs.events.subscribe(
                None if watch.tree else op.ino, lambda change: self._changed(conn, op, change)
            )
        if len(watch.waiting) >= 16:
            raise SMBError(st.STATUS_INSUFFICIENT_RESOURCES, "too many waiting notifies")
        limit = min(body.output_length, watch.limit)
        if watch.changes or watch.overflow:
            return self._notify_reply(watch, limit)
        d: defer.Deferred[Reply] = defer.Deferred(lambda d: self._notify_cancelled(watch, d))
        watch.waiting.append((d, limit))
        return await conn.go_async(req, d)

    def _notify_cancelled(self, watch: Watch, d: defer.Deferred[Any]) -> None:
        watch.waiting = type(watch.waiting)(w for w in watch.waiting if w[0] is not d)

    def _notify_reply(self, watch: Watch, limit: int) -> Reply:
        if watch.overflow:
            watch.overflow = False
            watch.changes.clear()
            return Reply(pack_buffer_response(b""), st.STATUS_NOTIFY_ENUM_DIR)
        out = bytearray()
        last = -1
        for action, name in watch.changes:
            raw = utf16_encode(name)[0]
            entry = struct.pack("<III", 0, action, len(raw)) + raw
            start = (len(out) + 3) & ~3
            if last >= 0:
                out += b"\x00" * (start - len(out))
                struct.pack_into("<I", out, last, start - last)
            last = len(out)
            out += entry
        watch.changes.clear()
        if len(out) > limit:
            return Reply(pack_buffer_response(b""), st.STATUS_NOTIFY_ENUM_DIR)
        return Reply(pack_buffer_response(bytes(out)))

    def _changed(self, conn: Any, op: Open, change: Change) -> None:
        watch = op.watch
        if watch is None or op.closed:
            return
        if change.action is Action.RESCAN:
            # Entries changed through another gateway, names unknown: "read
            # it again" (NOTIFY_ENUM_DIR), if the watch asked for names.
            if not watch.filter & (c.FILE_NOTIFY_CHANGE_FILE_NAME | c.FILE_NOTIFY_CHANGE_DIR_NAME):
                return
            if change.dir in (0, op.ino):
                self._queue_change(conn, op, watch, None)
            elif watch.tree:
                self._queue_if_below(conn, op, watch, change.dir)
            return
        if change.ino == op.ino and change.dir != op.ino:
            # The watched directory itself went (removed through another
            # protocol, or renamed over).
            if change.action is Action.REMOVED:
                self.watch_deleted(op)
            return
        if change.action in (Action.REMOVED, Action.RENAMED_FROM):
            self._parents.pop(change.ino, None)
        if change.dir == op.ino:
            self._queue_change(conn, op, watch, change)
            return
        if watch.tree:
            self._queue_if_below(conn, op, watch, change.dir)

    def _queue_if_below(self, conn: Any, op: Open, watch: Watch, dir_ino: int) -> None:
        """A change in C{dir_ino}, below a tree watch's directory: "read it again"."""
        d = defer.Deferred.fromCoroutine(self._descendant(op, dir_ino))
        d.addCallback(lambda inside: self._queue_change(conn, op, watch, None) if inside else None)
        d.addErrback(lambda f: self._log.failure("smb: notify ancestry", f))

    async def _descendant(self, op: Open, dir_ino: int) -> bool:
        """Whether C{dir_ino} lies under the watched directory (walking up, cached)."""
        vfs = self.vfs
        caller = op.tree.caller
        root = op.tree.export.root_ino
        cur = dir_ino
        for _ in range(64):
            if cur == op.ino:
                return True
            if cur == root:
                return False
            parent = self._parents.get(cur)
            if parent is None:
                try:
                    parent = (await vfs.lookup(caller, cur, b"..")).ino
                except errors.FSError:
                    return False
                self._parents[cur] = parent
                if len(self._parents) > 4096:
                    self._parents.popitem(last=False)
            if parent == cur:
                return False
            cur = parent
        return False

    def _queue_change(self, conn: Any, op: Open, watch: Watch, change: Change | None) -> None:
        if change is None:
            watch.overflow = True  # a change below: clients re-read the tree
        else:
            action = {
                Action.ADDED: c.FILE_ACTION_ADDED,
                Action.REMOVED: c.FILE_ACTION_REMOVED,
                Action.MODIFIED: c.FILE_ACTION_MODIFIED,
                Action.RENAMED_FROM: c.FILE_ACTION_RENAMED_OLD_NAME,
                Action.RENAMED_TO: c.FILE_ACTION_RENAMED_NEW_NAME,
            }[change.action]
            names = c.FILE_NOTIFY_CHANGE_FILE_NAME | c.FILE_NOTIFY_CHANGE_DIR_NAME
            wanted = names if action != c.FILE_ACTION_MODIFIED else _notify_bits(change.what)
            if not watch.filter & wanted:
                return
            name = decode_name(change.name)
            if name is None:
                return
            if watch.changes and watch.changes[-1] == (action, name):
                return  # one write after another: one "modified" is enough
            if len(watch.changes) >= MAX_NOTIFY_QUEUE:
                watch.overflow = True
            else:
                watch.changes.append((action, name))
        if watch.waiting:
            # Answered at once; what changes meanwhile waits for the next request
            # (as Windows does: smbtorture smb2.notify.valid-req).
            d, limit = watch.waiting.popleft()
            d.callback(self._notify_reply(watch, limit))

    def watch_deleted(self, op: Open) -> None:
        """
        The watched directory is to be deleted (delete-on-close set and its
        handle closed) or is gone: waiting requests get DELETE_PENDING, as
        from Windows and Samba (smbtorture smb2.notify.rmdir1-4); the watch stays.
        """
        watch = op.watch
        if watch is None:
            return
        while watch.waiting:
            d, _ = watch.waiting.popleft()
            d.callback(Reply(pack_buffer_response(b""), st.STATUS_DELETE_PENDING))

    def _end_watch(self, conn: Any, op: Open) -> None:
        watch = op.watch
        op.watch = None
        if watch is None:
            return
        if watch.unsubscribe is not None:
            watch.unsubscribe()
        while watch.waiting:
            d, _ = watch.waiting.popleft()
            d.callback(Reply(pack_buffer_response(b""), st.STATUS_NOTIFY_CLEANUP))
