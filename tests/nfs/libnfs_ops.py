"""
Drive libnfs (Debian's libnfs13, the library under nfs-cp and nfs-ls) through
ctypes, for the NFS operations libnfs-utils has no command for: mkdir, rmdir,
rename, symlink, readlink, link, unlink, stat, chmod, listdir, and whole-file
write (open with O_TRUNC, write, close), truncate and read.

Run as a child process (never in the test's reactor)::

    python -m tests.nfs.libnfs_ops 'nfs://127.0.0.1/export?version=3&nfsport=P&mountport=Q' \\
        mkdir /d  symlink target /d/ln  readlink /d/ln ...

Prints one JSON object per operation: {"op", "args", "ret", "result", "error"}.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
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
    "write": 2,
    "truncate": 2,
    "read": 1,
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
            result = {"mode": st.mode, "size": st.size, "nlink": st.nlink, "ino": st.ino}
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
        elif op == "write":
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
        elif op == "read":
            fh = ctypes.c_void_p()
            ret = lib.nfs_open(ctypes.c_void_p(nfs), b[0], 0, ctypes.byref(fh))
            if ret == 0:
                buf = ctypes.create_string_buffer(65536)
                ret = lib.nfs_read(ctypes.c_void_p(nfs), fh, 65536, buf)
                result = buf.raw[: max(ret, 0)].decode("utf-8", "replace")
                lib.nfs_close(ctypes.c_void_p(nfs), fh)
                ret = min(ret, 0)
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
