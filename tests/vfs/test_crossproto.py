"""
One file, every protocol, at the vfs: share modes, byte-range locks, leases
and change events hold whichever front end asks (docs/locks.rst "One file,
every protocol"). The real-client versions of these are in
tests/test_crossproto.py.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from zope.interface import implementer
from zope.interface.verify import verifyObject

from claudefs_gateway import errors
from claudefs_gateway.fstypes import SetAttrs
from claudefs_gateway.interfaces import IVFS, ILeaseHolder
from claudefs_gateway.testing.vfs import MemoryVFS
from claudefs_gateway.vfs import Action, Change, LockOwner
from claudefs_gateway.vfs.events import What
from claudefs_gateway.vfs.leases import RWH, H, Lease, LeaseKey, R, W
from claudefs_gateway.vfs.origin import Origin

NLM = LockOwner("nlm", "host-a", b"svid1")
SMB = LockOwner("smb", 7, b"fid1")


@implementer(ILeaseHolder)
class Holder:
    def __init__(self) -> None:
        self.breaks: list[tuple[Lease, int]] = []

    def lease_break(self, lease: Lease, to: int) -> bool:
        self.breaks.append((lease, to))
        return True

    def lease_revoked(self, lease: Lease) -> None:
        pass


class CrossProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.m = MemoryVFS("exports: [{path: /export, dir_mode: 0777}]\n")
        self.vfs = self.m.vfs
        self.nfs = self.m.caller(protocol="nfs3")
        self.s3 = self.m.caller(protocol="s3")
        self.smb = self.m.caller(protocol="smb")
        root = self.m.root()
        self.root = root
        self.file = self.successResultOf(self.vfs.create(self.nfs, root, b"f", 0o666))
        self.successResultOf(self.vfs.write(self.nfs, self.file.ino, 0, b"x" * 100, True))
        self.locks = self.vfs.locks
        self.leases = self.vfs.leases

    def write(self, caller: Any, origin: Origin | None = None) -> Any:
        return self.vfs.write(caller, self.file.ino, 10, b"yy", True, origin)

    def test_vfs_provides_interface(self) -> None:
        """The VFS provides IVFS (what every front end is typed against)."""
        self.assertTrue(verifyObject(IVFS, self.vfs))

    # -- share modes -------------------------------------------------------------------------------

    def test_deny_write_refuses_open_less_writes(self) -> None:
        """An SMB open denying write refuses NFS and S3 writes and truncations, not its own."""
        token = self.locks.open_share(self.file.ino, SMB, {"read", "write"}, {"write"})
        self.failureResultOf(self.write(self.nfs), errors.ShareConflict)
        self.failureResultOf(self.write(self.s3), errors.ShareConflict)
        self.failureResultOf(
            self.vfs.setattr(self.nfs, self.file.ino, SetAttrs(size=0)), errors.ShareConflict
        )
        own = Origin(owner=SMB, share=token, strict=True)
        self.successResultOf(self.write(self.smb, own))
        # Reads are not what it denies.
        self.successResultOf(self.vfs.read(self.nfs, self.file.ino, 0, 10))

    def test_deny_read(self) -> None:
        """An open denying read refuses open-less reads."""
        self.locks.open_share(self.file.ino, SMB, {"read"}, {"read"})
        self.failureResultOf(self.vfs.read(self.s3, self.file.ino, 0, 10), errors.ShareConflict)

    def test_deny_delete(self) -> None:
        """An open denying delete refuses unlink and rename of the file, and replacing it."""
        self.locks.open_share(self.file.ino, SMB, {"read"}, {"delete"})
        self.failureResultOf(self.vfs.remove(self.nfs, self.root, b"f"), errors.ShareConflict)
        self.failureResultOf(
            self.vfs.rename(self.nfs, self.root, b"f", self.root, b"g"), errors.ShareConflict
        )
        other = self.successResultOf(self.vfs.create(self.s3, self.root, b"new", 0o644))
        self.failureResultOf(
            self.vfs.rename(self.s3, self.root, b"new", self.root, b"f"), errors.ShareConflict
        )
        self.assertEqual(
            self.successResultOf(self.vfs.lookup(self.nfs, self.root, b"f")).ino, self.file.ino
        )
        self.assertNotEqual(other.ino, self.file.ino)

    def test_replace_respects_deny_write(self) -> None:
        """An S3 PUT lands by rename over the key: an open denying write refuses it."""
        self.locks.open_share(self.file.ino, SMB, {"read"}, {"write"})
        self.successResultOf(self.vfs.create(self.s3, self.root, b"tmp", 0o644))
        self.failureResultOf(
            self.vfs.rename(self.s3, self.root, b"tmp", self.root, b"f"), errors.ShareConflict
        )

    # -- byte-range locks --------------------------------------------------------------------------

    def test_smb_lock_binds_everyone(self) -> None:
        """A Windows (SMB) lock refuses NFS, S3 and other SMB writes to its bytes."""
        self.successResultOf(self.locks.lock(self.file.ino, SMB, 0, 50, True))
        self.failureResultOf(self.write(self.nfs), errors.LockConflict)
        self.failureResultOf(self.write(self.s3), errors.LockConflict)
        other = Origin(owner=LockOwner("smb", 8, b"fid2"), strict=True)
        self.failureResultOf(self.write(self.smb, other), errors.LockConflict)
        self.failureResultOf(self.vfs.read(self.nfs, self.file.ino, 0, 10), errors.LockConflict)
        # Outside its range, writes go through.
        self.successResultOf(self.vfs.write(self.nfs, self.file.ino, 60, b"z", True))

    def test_nlm_lock_advisory_for_nfs_binding_for_smb_and_s3(self) -> None:
        """A POSIX (NLM) lock does not refuse NFS writes, but refuses SMB and S3 ones."""
        self.successResultOf(self.locks.lock(self.file.ino, NLM, 0, 0, True))
        self.successResultOf(self.write(self.nfs))
        smb = Origin(owner=SMB, strict=True)
        self.failureResultOf(self.write(self.smb, smb), errors.LockConflict)
        self.failureResultOf(self.write(self.s3), errors.LockConflict)
        # Its own owner writes freely.
        self.successResultOf(self.write(self.nfs, Origin(owner=NLM)))

    def test_s3_delete_of_locked_object(self) -> None:
        """S3 removes whole objects: any lock of another owner refuses the delete."""
        self.successResultOf(self.locks.lock(self.file.ino, NLM, 90, 1, False))
        self.failureResultOf(self.vfs.remove(self.s3, self.root, b"f"), errors.LockConflict)
        self.successResultOf(self.vfs.remove(self.nfs, self.root, b"f"))

    def test_truncate_checks_the_bytes_it_cuts(self) -> None:
        """A truncation is a write of the bytes between the new and the old size."""
        self.successResultOf(self.locks.lock(self.file.ino, SMB, 80, 10, False))
        self.failureResultOf(
            self.vfs.setattr(self.nfs, self.file.ino, SetAttrs(size=50)), errors.LockConflict
        )
        self.successResultOf(self.vfs.setattr(self.nfs, self.file.ino, SetAttrs(size=95)))

    # -- leases ------------------------------------------------------------------------------------

    def grant(self, want: int = RWH, n: int = 1) -> tuple[Lease, Holder]:
        holder = Holder()
        lease = self.leases.grant(self.file.ino, LeaseKey("smb", f"c{n}", b"k"), want, holder)
        assert lease is not None
        return lease, holder

    def test_nfs_write_breaks_smb_lease_first(self) -> None:
        """An NFS write waits for an SMB client to give up its read and write caching."""
        lease, holder = self.grant()
        d = self.write(self.nfs)
        self.assertNoResult(d)
        self.assertEqual(holder.breaks, [(lease, H)])
        before = self.successResultOf(
            self.vfs.read(
                self.smb, self.file.ino, 10, 2, Origin(owner=SMB, exempt=(lease.key,), strict=True)
            )
        ).data
        self.assertEqual(before, b"xx")  # nothing written before the acknowledgement
        self.leases.acknowledge(lease, H)
        self.successResultOf(d)
        self.assertEqual(
            self.successResultOf(self.vfs.read(self.nfs, self.file.ino, 10, 2)).data, b"yy"
        )

    def test_read_breaks_only_write_caching(self) -> None:
        """An S3 GET breaks an SMB write lease to read+handle."""
        lease, holder = self.grant()
        d = self.vfs.read(self.s3, self.file.ino, 0, 10)
        self.assertEqual(holder.breaks, [(lease, R | H)])
        self.leases.acknowledge(lease, R | H)
        self.successResultOf(d)

    def test_own_lease_not_broken(self) -> None:
        """A write through the lease holder's own open breaks nothing."""
        lease, holder = self.grant()
        origin = Origin(owner=SMB, exempt=(lease.key,), strict=True)
        self.successResultOf(self.write(self.smb, origin))
        self.assertEqual(holder.breaks, [])

    def test_no_wait_origin(self) -> None:
        """A request that does not wait gets Again while the break is outstanding (NFS4ERR_DELAY)."""
        lease, holder = self.grant()
        self.failureResultOf(self.write(self.nfs, Origin(wait=False)), errors.Again)
        self.leases.acknowledge(lease, H)
        self.successResultOf(self.write(self.nfs, Origin(wait=False)))

    def test_unlink_breaks_everything_and_ends_leases(self) -> None:
        """Removing a file's last name breaks every lease on it; the leases end with the file."""
        lease, holder = self.grant(R | H)
        d = self.vfs.remove(self.nfs, self.root, b"f")
        self.assertEqual(holder.breaks, [(lease, 0)])
        self.leases.acknowledge(lease, 0)
        self.successResultOf(d)
        self.assertEqual(self.leases.leases(self.file.ino), [])

    def test_rename_breaks_handle_caching(self) -> None:
        """A rename of the file by someone else breaks handle caching."""
        lease, holder = self.grant()
        d = self.vfs.rename(self.nfs, self.root, b"f", self.root, b"g")
        self.assertEqual(holder.breaks, [(lease, R | W)])
        self.leases.acknowledge(lease, R | W)
        self.successResultOf(d)

    def test_directory_lease_broken_by_create(self) -> None:
        """A name added to a leased directory breaks the directory's read caching."""
        holder = Holder()
        lease = self.leases.grant(self.root, LeaseKey("smb", "c", b"d"), R | H, holder, is_dir=True)
        assert lease is not None
        d = self.vfs.create(self.s3, self.root, b"new", 0o644)
        self.assertEqual(holder.breaks, [(lease, H)])
        self.leases.acknowledge(lease, H)
        self.successResultOf(d)

    def test_setattr_breaks(self) -> None:
        """A mode change by someone else breaks read and write caching."""
        lease, holder = self.grant()
        d = self.vfs.setattr(self.nfs, self.file.ino, SetAttrs(mode=0o600))
        self.assertEqual(holder.breaks, [(lease, H)])
        self.leases.acknowledge(lease, H)
        self.successResultOf(d)

    def test_revoked_after_recall_time(self) -> None:
        """A client that never answers is revoked after leases.recall_timeout_secs; the write lands."""
        lease, holder = self.grant()
        d = self.write(self.nfs)
        self.m.clock.advance(self.vfs.config.leases.recall_timeout_secs)
        self.successResultOf(d)
        self.assertTrue(lease.revoked)

    # -- change events -----------------------------------------------------------------------------

    def watch(self) -> list[Change]:
        seen: list[Change] = []
        self.vfs.events.subscribe(self.root, seen.append)
        return seen

    def test_events_for_every_change(self) -> None:
        """Writes, truncation, attribute, xattr and namespace changes all reach a directory watcher."""
        seen = self.watch()
        ino = self.file.ino
        self.successResultOf(self.vfs.write(self.nfs, ino, 200, b"a", True))
        self.successResultOf(self.vfs.write(self.nfs, ino, 0, b"b", True))
        self.successResultOf(self.vfs.setattr(self.nfs, ino, SetAttrs(size=10)))
        self.successResultOf(self.vfs.setattr(self.nfs, ino, SetAttrs(mode=0o600)))
        self.successResultOf(self.vfs.setxattr(self.nfs, ino, b"user.k", b"v"))
        self.successResultOf(self.vfs.rename(self.nfs, self.root, b"f", self.root, b"g"))
        self.successResultOf(self.vfs.remove(self.s3, self.root, b"g"))
        self.assertEqual(
            [(c.action, c.name, c.what) for c in seen],
            [
                (Action.MODIFIED, b"f", What.DATA | What.SIZE),
                (Action.MODIFIED, b"f", What.DATA),
                (Action.MODIFIED, b"f", What.SIZE | What.DATA),
                (Action.MODIFIED, b"f", What.ATTRIBUTES | What.SECURITY),
                (Action.MODIFIED, b"f", What.XATTR),
                (Action.RENAMED_FROM, b"f", What.NONE),
                (Action.RENAMED_TO, b"g", What.NONE),
                (Action.REMOVED, b"g", What.NONE),
            ],
        )

    def test_modified_under_new_name(self) -> None:
        """After a rename, a write is reported under the new name."""
        self.successResultOf(self.vfs.rename(self.nfs, self.root, b"f", self.root, b"g"))
        seen = self.watch()
        self.successResultOf(self.write(self.nfs))
        self.assertEqual([(c.action, c.name) for c in seen], [(Action.MODIFIED, b"g")])

    def test_names_index_bounded(self) -> None:
        """The index of inode names stays within its bound however many files are seen."""
        limit = self.vfs._names_max
        for n in range(limit + 100):
            self.vfs._seen(self.root, b"n%d" % n, 10_000 + n)
        self.assertEqual(len(self.vfs._names), limit)
