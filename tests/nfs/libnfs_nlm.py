"""
NLM v4 calls made by libnfs (its raw NLM client, ``rpc_nlm4_*_async`` from
``libnfs-raw-nlm``) through ctypes, for the real-client lock tests. The file
handle comes from libnfs's own MOUNT and LOOKUP (``nfs_open``), the calls go
over libnfs's connection to the NFS port (the gateway serves NLM there too).

Run as a child process::

    python -m tests.nfs.libnfs_nlm URL /file CALLER  lock SVID OFFSET LEN EXCL  test SVID OFFSET LEN EXCL
        unlock SVID OFFSET LEN  cancel SVID OFFSET LEN EXCL  hold
        (lock and reclaim also take BLOCK after EXCL; reclaim sets NLM4_LOCKargs.reclaim)

Prints one JSON object per call: {"op", "status", "holder"}. ``hold`` prints
{"op": "hold"} and keeps the connection open until standard input closes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import select
import sys
from typing import Any


class Buf(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint), ("val", ctypes.c_void_p)]


class Lock(ctypes.Structure):
    _fields_ = [
        ("caller_name", ctypes.c_char_p),
        ("fh", Buf),
        ("oh", ctypes.c_char_p),
        ("svid", ctypes.c_uint),
        ("l_offset", ctypes.c_uint64),
        ("l_len", ctypes.c_uint64),
    ]


class LockArgs(ctypes.Structure):
    _fields_ = [
        ("cookie", Buf),
        ("block", ctypes.c_uint32),
        ("exclusive", ctypes.c_uint32),
        ("lock", Lock),
        ("reclaim", ctypes.c_uint32),
        ("state", ctypes.c_int),
    ]


class TestArgs(ctypes.Structure):
    _fields_ = [("cookie", Buf), ("exclusive", ctypes.c_uint32), ("lock", Lock)]


class CancArgs(ctypes.Structure):
    _fields_ = [
        ("cookie", Buf),
        ("block", ctypes.c_uint32),
        ("exclusive", ctypes.c_uint32),
        ("lock", Lock),
    ]


class UnlockArgs(ctypes.Structure):
    _fields_ = [("cookie", Buf), ("lock", Lock)]


class Res(ctypes.Structure):
    _fields_ = [("cookie", Buf), ("status", ctypes.c_int)]


class Holder(ctypes.Structure):
    _fields_ = [
        ("exclusive", ctypes.c_uint32),
        ("svid", ctypes.c_uint),
        ("oh", ctypes.c_char_p),
        ("l_offset", ctypes.c_uint64),
        ("l_len", ctypes.c_uint64),
    ]


class TestRes(ctypes.Structure):
    _fields_ = [("cookie", Buf), ("status", ctypes.c_int), ("holder", Holder)]


class NfsFh(ctypes.Structure):
    # struct nfs_fh { int len; char *val; } (libnfs-private.h)
    _fields_ = [("len", ctypes.c_int), ("val", ctypes.c_void_p)]


class Url(ctypes.Structure):
    _fields_ = [("server", ctypes.c_char_p), ("path", ctypes.c_char_p), ("file", ctypes.c_char_p)]


RPC_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
ARITY = {"lock": 5, "reclaim": 5, "test": 4, "unlock": 3, "cancel": 4, "hold": 0}


def main(argv: list[str]) -> int:
    lib = ctypes.CDLL(ctypes.util.find_library("nfs") or "libnfs.so.13")
    vp = ctypes.c_void_p
    lib.nfs_init_context.restype = vp
    lib.nfs_parse_url_dir.restype = vp
    lib.nfs_parse_url_dir.argtypes = [vp, ctypes.c_char_p]
    lib.nfs_mount.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p]
    lib.nfs_open.argtypes = [vp, ctypes.c_char_p, ctypes.c_int, vp]
    lib.nfs_get_fh.restype = ctypes.POINTER(NfsFh)
    lib.nfs_get_fh.argtypes = [vp]
    lib.nfs_get_rpc_context.restype = vp
    lib.nfs_get_rpc_context.argtypes = [vp]
    lib.nfs_get_fd.argtypes = [vp]
    lib.nfs_which_events.argtypes = [vp]
    lib.nfs_service.argtypes = [vp, ctypes.c_int]
    lib.nfs_get_error.restype = ctypes.c_char_p
    lib.nfs_get_error.argtypes = [vp]
    for name in ("test", "lock", "cancel", "unlock"):
        getattr(lib, f"rpc_nlm4_{name}_async").argtypes = [vp, RPC_CB, vp, vp]

    url, path, caller = argv[0], argv[1], argv[2].encode()
    nfs = lib.nfs_init_context()
    u = ctypes.cast(lib.nfs_parse_url_dir(nfs, url.encode()), ctypes.POINTER(Url)).contents
    if lib.nfs_mount(nfs, u.server, u.path) != 0:
        print(json.dumps({"op": "mount", "error": lib.nfs_get_error(nfs).decode()}))
        return 2
    fh = vp()
    if lib.nfs_open(nfs, path.encode(), os.O_RDWR, ctypes.byref(fh)) != 0:
        print(json.dumps({"op": "open", "error": lib.nfs_get_error(nfs).decode()}))
        return 2
    raw = lib.nfs_get_fh(fh).contents
    handle = ctypes.string_at(raw.val, raw.len)
    handle_buf = ctypes.create_string_buffer(handle, len(handle))
    rpc = lib.nfs_get_rpc_context(nfs)
    cookie = ctypes.create_string_buffer(b"libnfs", 6)
    keep: list[Any] = []

    def lock_of(svid: int, offset: int, length: int) -> Lock:
        oh = f"oh-{svid}@{caller.decode()}".encode()
        keep.append(oh)
        return Lock(caller, Buf(len(handle), ctypes.cast(handle_buf, vp)), oh, svid, offset, length)

    def call(fn: Any, args: Any, res_type: Any) -> Any:
        done: list[Any] = []

        def cb(_rpc: Any, status: int, data: Any, _priv: Any) -> None:
            if status != 0 or not data:
                done.append(("rpc-error", status))
                return
            r = ctypes.cast(data, ctypes.POINTER(res_type)).contents
            holder = None
            if res_type is TestRes and r.status == 1:
                h = r.holder
                holder = {
                    "exclusive": bool(h.exclusive),
                    "svid": h.svid,
                    "offset": h.l_offset,
                    "length": h.l_len,
                    "oh": (h.oh or b"").decode("utf-8", "replace"),
                }
            done.append((r.status, holder))

        callback = RPC_CB(cb)
        if fn(rpc, callback, ctypes.byref(args), None) != 0:
            raise RuntimeError("could not queue the call")
        poller = select.poll()
        while not done:
            poller.register(lib.nfs_get_fd(nfs), lib.nfs_which_events(nfs))
            events = poller.poll(10_000)
            if not events:
                raise RuntimeError("no reply in 10 s")
            if lib.nfs_service(nfs, events[0][1]) < 0:
                raise RuntimeError(lib.nfs_get_error(nfs).decode())
        return done[0]

    ops = argv[3:]
    while ops:
        op = ops.pop(0)
        p = [int(ops.pop(0)) for _ in range(ARITY[op])]
        ck = Buf(6, ctypes.cast(cookie, vp))
        if op == "hold":
            print(json.dumps({"op": "hold"}), flush=True)
            sys.stdin.read()
            continue
        if op in ("lock", "reclaim"):
            reclaim = 1 if op == "reclaim" else 0
            args: Any = LockArgs(ck, p[4], p[3], lock_of(p[0], p[1], p[2]), reclaim, 1)
            status, holder = call(lib.rpc_nlm4_lock_async, args, Res)
        elif op == "test":
            args = TestArgs(ck, p[3], lock_of(p[0], p[1], p[2]))
            status, holder = call(lib.rpc_nlm4_test_async, args, TestRes)
        elif op == "cancel":
            args = CancArgs(ck, 1, p[3], lock_of(p[0], p[1], p[2]))
            status, holder = call(lib.rpc_nlm4_cancel_async, args, Res)
        else:
            args = UnlockArgs(ck, lock_of(p[0], p[1], p[2]))
            status, holder = call(lib.rpc_nlm4_unlock_async, args, Res)
        print(json.dumps({"op": op, "status": status, "holder": holder}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
