"""Export rules: squash matrices and client networks (L{claudefs_gateway.vfs.exports})."""

from __future__ import annotations

import itertools

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.core.config import Export, Network
from claudefs_gateway.fstypes import Credentials
from claudefs_gateway.vfs.exports import Exports, export_id, squash


class SquashTests(SynchronousTestCase):
    def test_matrix(self) -> None:
        """Every (root_squash, all_squash) × (uid, gid, groups) gives Linux knfsd's identity."""
        creds = [
            Credentials(0, 0, (0, 10)),
            Credentials(0, 50, ()),
            Credentials(1000, 0, ()),
            Credentials(1000, 1000, (10, 0)),
        ]
        for root_squash, all_squash, cred in itertools.product((False, True), (False, True), creds):
            rules = Export(
                path="/e",
                root_squash=root_squash,
                all_squash=all_squash,
                anonuid=65534,
                anongid=65533,
            )
            got = squash(rules, cred)
            if all_squash:
                want = Credentials(65534, 65533, ())
            elif root_squash:
                want = Credentials(
                    65534 if cred.uid == 0 else cred.uid,
                    65533 if cred.gid == 0 else cred.gid,
                    tuple(65533 if g == 0 else g for g in cred.groups),
                )
            else:
                want = cred
            self.assertEqual(got, want, (root_squash, all_squash, cred))

    def test_squashed_root_is_not_root(self) -> None:
        got = squash(Export(path="/e"), Credentials(0, 0))
        self.assertFalse(got.is_root)


class ClientNetworkTests(SynchronousTestCase):
    def test_allowed_and_refused(self) -> None:
        rules = Export(path="/e", clients=[Network.parse("10.0.0.0/8"), Network.parse("::1")])
        table = Exports.from_config([rules])
        [e] = list(table)
        caller = table.caller(e, "10.2.3.4", Credentials(1, 1), "nfs3")
        self.assertEqual(caller.cred, Credentials(1, 1))
        table.caller(e, "::1", Credentials(1, 1), "nfs3")
        for bad in ("192.168.0.1", "::2", "garbage"):
            self.assertRaises(errors.Access, table.caller, e, bad, Credentials(1, 1), "nfs3")


class TableTests(SynchronousTestCase):
    def test_ids_stable_and_lookup(self) -> None:
        a, b = Export(path="/a", name="Alpha"), Export(path="/b", protocols=["nfs"])
        t1 = Exports.from_config([a, b], s3_root="/")
        t2 = Exports.from_config([b, a], s3_root="/")
        self.assertEqual({e.id for e in t1}, {e.id for e in t2})
        self.assertEqual(t1.by_path("/a").id, export_id("/a"))
        self.assertEqual(t1.by_name("ALPHA", "smb").path, "/a")
        self.assertIsNone(t1.by_name("b", "smb"))
        self.assertEqual([e.path for e in t1.for_protocol("nfs")], ["/a", "/b"])
        self.assertEqual(t1.s3.path, "/")
        self.assertFalse(t1.s3.rules.root_squash)
