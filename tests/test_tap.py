"""Tests for the twistd plugins and their Options (L{claudefs_gateway.tap})."""

from __future__ import annotations

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from zope.interface.verify import verifyObject

from claudefs_gateway import service, tap
from claudefs_gateway.core import config as cfg
from tests.helpers import bin_path, child_env, spawn, unbuild

TAPNAMES = {"claudefs-gateway", "claudefs-nfs", "claudefs-s3", "claudefs-smb"}


class PluginTests(SynchronousTestCase):
    def test_discovered_and_valid(self) -> None:
        """getPlugins finds every tapname, each a valid IServiceMaker and IPlugin."""
        found = {p.tapname: p for p in getPlugins(IServiceMaker) if p.tapname in TAPNAMES}
        self.assertEqual(set(found), TAPNAMES)
        for p in found.values():
            verifyObject(IServiceMaker, p)
            verifyObject(IPlugin, p)
            self.assertTrue(issubclass(p.options, usage.Options))


class TwistdHelpTests(TestCase):
    timeout = 60

    async def test_twistd_help_lists_plugins(self) -> None:
        """`twistd --help` in a fresh process lists every plugin."""
        proc = spawn([bin_path("twistd"), "--help"], env=child_env())
        await proc.ended
        text = "\n".join(proc.text)
        for name in TAPNAMES:
            self.assertIn(name, text)


class OptionsTests(SynchronousTestCase):
    def parse(self, cls: type[tap.Options], argv: list[str]) -> tap.Options:
        o = cls()
        o.parseOptions(argv)
        return o

    def test_no_config_means_defaults(self) -> None:
        o = self.parse(tap.Options, [])
        self.assertEqual(o.config, cfg.default_config())
        self.assertIsNone(o.protocols)

    def test_flags_override(self) -> None:
        o = self.parse(
            tap.Options,
            [
                "--data-dir",
                "/srv/cfs",
                "--log-level",
                "debug",
                "--export",
                "/a",
                "--export",
                "/b",
                "--admin-bind",
                "127.0.0.1:9999",
                "--log-format",
                "json",
            ],
        )
        c = o.config
        assert c is not None
        self.assertEqual(c.backend.data_dir, "/srv/cfs")
        self.assertEqual(c.log_level, "debug")
        self.assertEqual(c.log_format, "json")
        self.assertEqual([e.path for e in c.exports], ["/a", "/b"])
        self.assertEqual(c.admin.bind.port, 9999)

    def test_config_file_errors_are_usage_errors(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("connection_pool:\n  max_per_node: -1\n")
        with self.assertRaises(usage.UsageError) as ctx:
            self.parse(tap.Options, ["--config", path])
        self.assertIn(
            f"{path}:2: connection_pool.max_per_node: must be at least 1, got -1",
            str(ctx.exception),
        )

    def test_bad_flag_value_names_flag(self) -> None:
        with self.assertRaises(usage.UsageError) as ctx:
            self.parse(tap.Options, ["--log-level", "chatty"])
        self.assertIn("(--log-level): log_level:", str(ctx.exception))

    def test_protocol_flags(self) -> None:
        """Per-protocol options map their flags to that protocol's keys (when built)."""
        cases = {
            "nfs": (
                ["--bind", "127.0.0.1:3049", "--mount-bind", "127.0.0.1:3048"],
                lambda c: (c.nfs.bind.port, c.nfs.mount_bind.port),
                (3049, 3048),
            ),
            "s3": (["--bind", ":9100"], lambda c: c.s3.bind.port, 9100),
            "smb": (
                ["--bind", "127.0.0.1:4450", "--domain", "CORP", "--workgroup", "WG"],
                lambda c: (c.smb.bind.port, c.smb.domain, c.smb.workgroup),
                (4450, "CORP", "WG"),
            ),
        }
        for proto, (argv, get, want) in cases.items():
            cls = tap.OPTIONS[proto]
            o = self.parse(cls, argv)
            self.assertEqual(get(o.config), want)
            self.assertEqual(o.protocols, [proto])

    def test_unbuilt_protocol_plugin_refuses(self) -> None:
        """A per-protocol plugin whose front end is not built fails plainly at option parsing."""
        for proto in tap.OPTIONS:
            if proto not in cfg.PROTOCOLS:
                continue
            message = unbuild(self, proto)
            with self.assertRaises(usage.UsageError) as ctx:
                self.parse(tap.OPTIONS[proto], [])
            self.assertIn(message, str(ctx.exception))

    def test_make_service(self) -> None:
        o = self.parse(tap.Options, ["--data-dir", self.mktemp()])
        svc = tap.makeService(o)
        self.assertIsInstance(svc, service.GatewayService)
        self.assertFalse(svc.running)
