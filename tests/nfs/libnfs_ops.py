"""
Drive libnfs (Debian's libnfs13, the library under nfs-cp and nfs-ls) through
ctypes, for the NFS operations libnfs-utils has no command for: mkdir, rmdir,
rename, symlink, readlink, link, unlink, stat, chmod, listdir, and
``write PATH OFFSET TEXT`` / ``read PATH OFFSET COUNT`` at an offset;
``overwrite PATH TEXT`` (open with O_TRUNC, write, close), ``truncate PATH SIZE``,
``readall PATH`` and ``writecommit PATH TEXT`` (create, write, fsync: COMMIT, close),
``smallfile PATH TEXT`` (create with O_TRUNC, write, close: the bench's
``nfs.small_files``, whose close COMMITs).

Run as a child process (never in the test's reactor)::

    python -m tests.nfs.libnfs_ops 'nfs://127.0.0.1/export?version=3&nfsport=P&mountport=Q' \\
        mkdir /d  symlink target /d/ln  readlink /d/ln ...

Prints one JSON object per operation: {"op", "args", "ret", "result", "error"}.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import select
import sys
from typing import Any

ARITY = {
    "mkdir": 1,
    "rmdir": 1,
    "unlink": 1,
    "readlink": 1,
    "stat": 1,
    "listdir": 1,
    "rename": 2,
    "symlink": 2,
    "link": 2,
    "chmod": 2,
    "creat": 1,
    "write": 3,
    "read": 3,
    "overwrite": 2,
    "truncate": 2,
    "readall": 1,
    "writecommit": 2,
    "smallfile": 2,
}


class Stat64(ctypes.Structure):
    # struct nfs_stat_64 (libnfs.h)
    _fields_ = [
        (n, ctypes.c_uint64)
        for n in (
            "dev ino mode nlink uid gid rdev size blksize blocks atime mtime ctime "
            "atime_nsec mtime_nsec ctime_nsec used"
        ).split()
    ]


class DirEnt(ctypes.Structure):
    pass


DirEnt._fields_ = [
    ("next", ctypes.POINTER(DirEnt)),
    ("name", ctypes.c_char_p),
    ("inode", ctypes.c_uint64),
]


class Url(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p), ("file", ctypes.c_char_p)]


NFS_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


def _write_async(lib: Any, nfs: int, fh: Any, offset: int, data: bytes) -> tuple[int, str]:
    """nfs_pwrite_async and the libnfs event loop; (status, libnfs's error text at the callback)."""
    done: list[tuple[int, str]] = []

    def cb(status: int, ctx: Any, _data: Any, _private: Any) -> None:
        text = lib.nfs_get_error(ctx) if status < 0 else b""
        done.append((status, (text or b"").decode("utf-8", "replace")))

    callback = NFS_CB(cb)
    lib.nfs_which_events.argtypes = [ctypes.c_void_p]
    lib.nfs_get_fd.argtypes = [ctypes.c_void_p]
    lib.nfs_service.argtypes = [ctypes.c_void_p, ctypes.c_int]
    ret = lib.nfs_pwrite_async(
        ctypes.c_void_p(nfs),
        fh,
        ctypes.c_uint64(offset),
        ctypes.c_uint64(len(data)),
        data,
        callback,
        None,
    )
    if ret != 0:
        return ret, (lib.nfs_get_error(nfs) or b"").decode("utf-8", "replace")
    poller = select.poll()
    while not done:
        poller.register(lib.nfs_get_fd(nfs), lib.nfs_which_events(nfs))
        events = poller.poll(30_000)
        if not events:
            return -110, "timed out"
        if lib.nfs_service(ctypes.c_void_p(nfs), events[0][1]) < 0:
            return -5, (lib.nfs_get_error(nfs) or b"").decode("utf-8", "replace")
    return done[0]


def main(argv: list[str]) -> int:
    lib = ctypes.CDLL(ctypes.util.find_library("nfs") or "libnfs.so.13")
    lib.nfs_init_context.restype = ctypes.c_void_p
    lib.nfs_get_error.restype = ctypes.c_char_p
    lib.nfs_get_error.argtypes = [ctypes.c_void_p]
    lib.nfs_parse_url_dir.restype = ctypes.POINTER(Url)
    lib.nfs_parse_url_dir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.nfs_readdir.restype = ctypes.POINTER(DirEnt)
    lib.nfs_readdir.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    for name in ("mkdir", "rmdir", "unlink"):
        getattr(lib, f"nfs_{name}").argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    for name in ("rename", "symlink", "link"):
        getattr(lib, f"nfs_{name}").argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p]
    nfs = lib.nfs_init_context()
    url = lib.nfs_parse_url_dir(nfs, argv[0].encode())
    if not url:
        print(json.dumps({"op": "url", "error": lib.nfs_get_error(nfs).decode()}))
        return 2
    if lib.nfs_mount(ctypes.c_void_p(nfs), url.contents.server, url.contents.path) != 0:
        print(json.dumps({"op": "mount", "error": lib.nfs_get_error(nfs).decode()}))
        return 2
    args = argv[1:]
    while args:
        op = args.pop(0)
        params = [args.pop(0) for _ in range(ARITY[op])]
        out: dict[str, Any] = {"op": op, "args": params}
        b = [p.encode() for p in params]
        result: Any = None
        if op == "readlink":
            buf = ctypes.create_string_buffer(4096)
            ret = lib.nfs_readlink(ctypes.c_void_p(nfs), b[0], buf, 4096)
            result = buf.value.decode("utf-8", "replace")
        elif op == "stat":
            st = Stat64()
            ret = lib.nfs_stat64(ctypes.c_void_p(nfs), b[0], ctypes.byref(st))
            result = {
                "mode": st.mode,
                "size": st.size,
                "nlink": st.nlink,
                "ino": st.ino,
                "uid": st.uid,
                "gid": st.gid,
            }
        elif op == "listdir":
            d = ctypes.c_void_p()
            ret = lib.nfs_opendir(ctypes.c_void_p(nfs), b[0], ctypes.byref(d))
            names = []
            if ret == 0:
                while True:
                    ent = lib.nfs_readdir(ctypes.c_void_p(nfs), d)
                    if not ent:
                        break
                    names.append(ent.contents.name.decode("utf-8", "replace"))
                lib.nfs_closedir(ctypes.c_void_p(nfs), d)
            result = names
        elif op == "chmod":
            ret = lib.nfs_chmod(ctypes.c_void_p(nfs), b[0], int(params[1], 8))
        elif op == "write" and len(b[2]) <= 65536:
            # One WRITE call, asynchronously: the synchronous wrapper replaces
            # the server's status with a generic message, the callback sees it.
            fh = ctypes.c_void_p()
            ret = lib.nfs_open(ctypes.c_void_p(nfs), b[0], 1, ctypes.byref(fh))
            if ret == 0:
                ret, error = _write_async(lib, nfs, fh, int(params[1]), b[2])
                if error:
                    out["server_error"] = error
                lib.nfs_close(ctypes.c_void_p(nfs), fh)
        elif op in ("write", "read"):
            # libnfs 4.0: nfs_pwrite/nfs_pread(nfs, fh, offset, count, buf)
            fh = ctypes.c_void_p()
            flags = 1 if op == "write" else 0  # O_WRONLY / O_RDONLY
            ret = lib.nfs_open(ctypes.c_void_p(nfs), b[0], flags, ctypes.byref(fh))
            if ret == 0:
                offset = ctypes.c_uint64(int(params[1]))
                if op == "write":
                    data = b[2]
                    ret = lib.nfs_pwrite(
                        ctypes.c_void_p(nfs), fh, offset, ctypes.c_uint64(len(data)), data
                    )
                else:
                    n = int(params[2])
                    buf = ctypes.create_string_buffer(n)
                    ret = lib.nfs_pread(ctypes.c_void_p(nfs), fh, offset, ctypes.c_uint64(n), buf)
                    result = buf.raw[: max(ret, 0)].decode("latin-1")
                lib.nfs_close(ctypes.c_void_p(nfs), fh)
        elif op == "overwrite":
            # Overwrite in place: open O_WRONLY|O_TRUNC, write, close.
            fh = ctypes.c_void_p()
            ret = lib.nfs_open(ctypes.c_void_p(nfs), b[0], 0o1 | 0o1000, ctypes.byref(fh))
            if ret == 0:
                data = params[1].encode()
                ret = lib.nfs_write(ctypes.c_void_p(nfs), fh, len(data), data)
                lib.nfs_close(ctypes.c_void_p(nfs), fh)
                ret = min(ret, 0)
        elif op == "truncate":
            ret = lib.nfs_truncate(ctypes.c_void_p(nfs), b[0], ctypes.c_uint64(int(params[1])))
        elif op == "readall":
            fh = ctypes.c_void_p()
            ret = lib.nfs_open(ctypes.c_void_p(nfs), b[0], 0, ctypes.byref(fh))
            if ret == 0:
                buf = ctypes.create_string_buffer(65536)
                ret = lib.nfs_read(ctypes.c_void_p(nfs), fh, 65536, buf)
                result = buf.raw[: max(ret, 0)].decode("utf-8", "replace")
                lib.nfs_close(ctypes.c_void_p(nfs), fh)
                ret = min(ret, 0)
        elif op == "writecommit":
            fh = ctypes.c_void_p()
            ret = lib.nfs_creat(ctypes.c_void_p(nfs), b[0], 0o644, ctypes.byref(fh))
            if ret == 0:
                data = b[1]
                ret = lib.nfs_pwrite(
                    ctypes.c_void_p(nfs), fh, ctypes.c_uint64(0), ctypes.c_uint64(len(data)), data
                )
                if ret == len(data):
                    ret = lib.nfs_fsync(ctypes.c_void_p(nfs), fh)
                elif ret >= 0:
                    ret = -5
                lib.nfs_close(ctypes.c_void_p(nfs), fh)
        elif op == "smallfile":
            fh = ctypes.c_void_p()
            flags = 0o1 | 0o100 | 0o1000  # O_WRONLY | O_CREAT | O_TRUNC
            ret = lib.nfs_create(ctypes.c_void_p(nfs), b[0], flags, 0o644, ctypes.byref(fh))
            if ret == 0:
                data = b[1]
                ret = lib.nfs_write(ctypes.c_void_p(nfs), fh, ctypes.c_uint64(len(data)), data)
                ret = min(lib.nfs_close(ctypes.c_void_p(nfs), fh), 0 if ret == len(data) else -5)
        elif op == "creat":
            fh = ctypes.c_void_p()
            ret = lib.nfs_creat(ctypes.c_void_p(nfs), b[0], 0o644, ctypes.byref(fh))
            if ret == 0:
                lib.nfs_close(ctypes.c_void_p(nfs), fh)
        else:
            ret = getattr(lib, f"nfs_{op}")(nfs, *b)
        out["ret"] = ret
        out["result"] = result
        if ret < 0:
            out["error"] = (lib.nfs_get_error(nfs) or b"").decode("utf-8", "replace")
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
