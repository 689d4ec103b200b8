"""The NFSv4 pseudo-filesystem (L{claudefs_gateway.nfs.v4.pseudo})."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core import config as cfg
from claudefs_gateway.nfs.v4.pseudo import PseudoFS, PseudoNode, is_pseudo_handle
from claudefs_gateway.vfs.exports import ExportInfo, Exports


def build(text: str) -> PseudoFS:
    config = cfg.loads(text)
    exports = list(Exports.from_config(config.all_exports()))
    return PseudoFS([ExportInfo(e.id, e.rules, 100 + i) for i, e in enumerate(exports)], 0)


class PseudoTests(SynchronousTestCase):
    def test_tree(self) -> None:
        p = build("exports: [{path: /a/b}, {path: /a/c}, {path: /d}]")
        names = [n for n, _ in p.listing(p.root, "1.2.3.4")]
        self.assertEqual(names, [b"a", b"d"])
        a = p.lookup(p.root, b"a", "")
        assert isinstance(a, PseudoNode)
        self.assertEqual([n for n, _ in p.listing(a, "")], [b"b", b"c"])
        b = p.lookup(a, b"b", "")
        assert isinstance(b, ExportInfo)
        self.assertIs(p.parent_of(b), a)
        self.assertNotEqual(p.mounted_on(b), 0)
        self.assertTrue(is_pseudo_handle(a.handle))
        self.assertIs(p.node(a.handle), a)
        self.assertEqual(p.attrs(a).mode, 0o555)

    def test_handles_stable(self) -> None:
        """Pseudo handles depend on paths only: the same across restarts."""
        one = build("exports: [{path: /x/y}]")
        two = build("exports: [{path: /x/y}, {path: /z}]")
        x1 = one.lookup(one.root, b"x", "")
        x2 = two.lookup(two.root, b"x", "")
        assert isinstance(x1, PseudoNode) and isinstance(x2, PseudoNode)
        self.assertEqual(x1.handle, x2.handle)

    def test_client_networks(self) -> None:
        """Paths that lead only to exports a client may not use are hidden from it."""
        p = build('exports: [{path: /lan/one, clients: ["10.0.0.0/8"]}, {path: /pub}]')
        self.assertEqual([n for n, _ in p.listing(p.root, "192.168.1.1")], [b"pub"])
        self.assertIsNone(p.lookup(p.root, b"lan", "192.168.1.1"))
        self.assertIsNotNone(p.lookup(p.root, b"lan", "10.1.1.1"))

    def test_root_export(self) -> None:
        """An export of / is the root itself: no pseudo directories at all."""
        p = build("exports: [{path: /}, {path: /sub}]")
        self.assertIsNotNone(p.root_export)
        self.assertIsNone(p.node(p.root.handle))

    def test_nested_exports(self) -> None:
        """An export inside another is reached through the outer one."""
        p = build("exports: [{path: /a}, {path: /a/b}]")
        self.assertEqual([n for n, _ in p.listing(p.root, "")], [b"a"])
        self.assertIsInstance(p.lookup(p.root, b"a", ""), ExportInfo)
