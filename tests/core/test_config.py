"""
Tests for L{claudefs_gateway.core.config}.

Besides hand-written cases, one test per schema key is generated below: each
key is given a value of the wrong kind (and, where it has a range or choices,
out-of-range values), and the error must name that key's path and its line.
A key added to the schema is therefore tested without anyone remembering to.
"""

from __future__ import annotations

import os
from typing import Any, Literal, get_args, get_origin

import attrs
import yaml
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core import config as cfg
from claudefs_gateway.core._schema import _hints, _is_union, parse_size
from claudefs_gateway.core.config import Config, ConfigError, Listen, Network
from tests.helpers import REPO


def problems(
    text: str, overrides: dict[str, tuple[Any, str]] | None = None
) -> list[tuple[str, Any, str]]:
    try:
        cfg.loads(text, "g.yaml", overrides)
    except ConfigError as e:
        return [(p.path, p.where, p.message) for p in e.problems]
    raise AssertionError("configuration unexpectedly valid")


class DefaultsTests(SynchronousTestCase):
    def test_empty_file_is_all_defaults(self) -> None:
        """An empty file validates and gives the design documents' defaults."""
        c = cfg.loads("", "empty.yaml")
        self.assertEqual(c, cfg.default_config())
        self.assertEqual(c.nfs.bind.port, 2049)
        self.assertEqual(c.nfs.mount_bind.port, 20048)
        self.assertEqual(c.s3.bind.port, 9000)
        self.assertEqual(c.smb.bind.port, 445)
        self.assertEqual(c.admin.bind.shown, "127.0.0.1:8080")
        self.assertEqual(c.backend.type, "embedded")
        self.assertEqual(c.backend.data_dir, "./cfs-data")
        self.assertEqual(c.connection_pool.max_per_node, 32)
        self.assertEqual(c.circuit_breaker.open_duration_ms, 30000)
        self.assertEqual(c.cache.nfs_attr_cache.eviction, "lru")
        self.assertEqual(c.s3.multipart_chunk_min, 5 * 1024 * 1024)

    def test_default_export(self) -> None:
        """With no exports anywhere, /export is exported over NFS and SMB."""
        c = cfg.default_config()
        [e] = c.all_exports()
        self.assertEqual((e.path, e.share_name, e.root_squash), ("/export", "export", True))
        self.assertEqual(c.exports_for("smb"), [e])

    def test_seed_nfs_exports(self) -> None:
        """nfs.exports, as the design documents write them, export over NFS only."""
        c = cfg.loads("nfs:\n  exports:\n    - path: /export\n      read_only: true\n")
        [e] = c.all_exports()
        self.assertTrue(e.read_only)
        self.assertEqual(c.exports_for("smb"), [])
        self.assertEqual(c.exports_for("nfs"), [e])

    def test_seed_example_from_readme(self) -> None:
        """The configuration in the design documents' README validates as written."""
        text = """
nfs:
  bind:
    addr: "0.0.0.0"
    port: 2049
  mount_bind:
    addr: "0.0.0.0"
    port: 20048
  exports:
    - path: "/export"
      read_only: false
      root_squash: true
s3:
  bind:
    addr: "0.0.0.0"
    port: 9000
  region: "us-west-2"
  enable_versioning: false
metadata_servers:
  - address: "meta-1.claudefs.local:7001"
  - address: "meta-2.claudefs.local:7001"
connection_pool:
  min_per_node: 4
  max_per_node: 32
circuit_breaker:
  failure_threshold: 5
  open_duration_ms: 30000
"""
        c = cfg.loads(text)
        self.assertEqual(c.s3.region, "us-west-2")
        self.assertEqual(
            [m.address for m in c.metadata_servers],
            ["meta-1.claudefs.local:7001", "meta-2.claudefs.local:7001"],
        )


class DoneWhenTests(SynchronousTestCase):
    """The issue's acceptance case, exactly."""

    def test_misspelt_negative_and_out_of_range(self) -> None:
        """A misspelt key, a negative max_per_node and port 70000 are all reported, with paths and lines."""
        text = (
            "nfs:\n  bnd: {addr: 0.0.0.0, port: 2049}\nconnection_pool:\n  max_per_node: -1\n"
            "s3:\n  bind:\n    port: 70000\n"
        )
        got = problems(text)
        self.assertIn(("nfs.bnd", 2, "unknown key; did you mean 'bind'?"), got)
        self.assertIn(("connection_pool.max_per_node", 4, "must be at least 1, got -1"), got)
        self.assertIn(("s3.bind.port", 7, "port 70000 is out of range 0..65535"), got)
        self.assertEqual(len(got), 3)


class LoadTests(SynchronousTestCase):
    def test_yaml_syntax_error_has_line(self) -> None:
        got = problems("nfs:\n  bind: [1, 2\ns3: {}\n")
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0][0], "")
        self.assertIsInstance(got[0][1], int)
        self.assertIn("not valid YAML", got[0][2])

    def test_top_level_must_be_mapping(self) -> None:
        self.assertEqual(
            problems("- a\n- b\n"), [("", 1, "the configuration must be a mapping of sections")]
        )

    def test_unknown_top_level_without_near_match_lists_keys(self) -> None:
        [(path, line, msg)] = problems("zzzz: 1\n")
        self.assertEqual((path, line), ("zzzz", 1))
        self.assertIn("known keys:", msg)
        self.assertIn("metadata_servers", msg)

    def test_duplicate_key(self) -> None:
        got = problems("s3:\n  region: a\n  region: b\n")
        self.assertIn(("s3.region", 3, "appears more than once"), got)

    def test_every_problem_in_one_pass(self) -> None:
        """Problems in different sections are all reported, sorted by line."""
        got = problems(
            "log_level: loud\nnfs:\n  enabled: 3\ncache:\n  nfs_attr_cache:\n    max_entries: -5\n"
        )
        self.assertEqual([p[1] for p in got], [1, 3, 6])

    def test_section_null_means_defaults(self) -> None:
        self.assertEqual(cfg.loads("nfs:\ns3:\n").nfs, cfg.default_config().nfs)

    def test_file_errors(self) -> None:
        missing = self.mktemp()
        with self.assertRaises(ConfigError) as ctx:
            cfg.load(missing)
        self.assertIn("cannot read", str(ctx.exception))
        self.assertIn(missing, str(ctx.exception))

    def test_not_utf8(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"log_level: \xff\xfe\n")
        with self.assertRaises(ConfigError):
            cfg.load(path)

    def test_cross_field_checks(self) -> None:
        got = problems(
            "connection_pool: {min_per_node: 40, max_per_node: 10}\n"
            "smb:\n  multichannel: {min_channels: 9, max_channels: 2}\n"
            "quota:\n  user_defaults: {bytes_soft: 10, bytes_hard: 5}\n"
        )
        paths = {p[0] for p in got}
        self.assertEqual(
            paths,
            {
                "connection_pool.min_per_node",
                "smb.multichannel.min_channels",
                "quota.user_defaults.bytes_soft",
            },
        )

    def test_versioning_setting(self) -> None:
        """s3.enable_versioning is an ordinary switch now: either value validates."""
        self.assertTrue(cfg.loads("s3: {enable_versioning: true}\n").s3.enable_versioning)
        self.assertFalse(cfg.loads("s3: {enable_versioning: false}\n").s3.enable_versioning)

    def test_remote_backend_needs_meta_servers(self) -> None:
        [(path, line, msg)] = problems("backend:\n  type: remote\n")
        self.assertEqual((path, line), ("metadata_servers", 2))
        self.assertIn("at least one metadata server", msg)
        c = cfg.loads("backend: {type: remote}\nmetadata_servers: [{address: 'm:7001'}]\n")
        self.assertEqual(c.metadata_servers[0].address, "m:7001")

    def test_tls_transport_needs_material(self) -> None:
        [(path, _, msg)] = problems(
            "backend: {type: remote}\nmetadata_servers: [{address: 'm:7001', transport: tls}]\n"
        )
        self.assertEqual(path, "metadata_servers[0].transport")
        self.assertIn("backend.tls", msg)

    def test_tls_pair(self) -> None:
        cert = self.mktemp()
        open(cert, "w").close()
        got = problems(f"s3: {{tls_cert: {cert}}}\n")
        self.assertEqual([p[0] for p in got], ["s3.tls_cert"])
        got = problems("s3: {tls_cert: /nonexistent/c.pem, tls_key: /nonexistent/k.pem}\n")
        self.assertEqual(sorted(p[0] for p in got), ["s3.tls_cert", "s3.tls_key"])

    def test_duplicate_export_paths_and_share_names(self) -> None:
        got = problems(
            "exports:\n  - {path: /a}\n  - {path: /a, name: other}\n  - {path: /b/x}\n  - {path: /c/x}\n"
        )
        msgs = " ".join(p[2] for p in got)
        self.assertIn("exported twice", msgs)
        self.assertIn("share name 'x' is used twice", msgs)

    def test_export_path_rules(self) -> None:
        got = problems("exports:\n  - {path: relative}\n  - {path: /a/../b}\n")
        self.assertEqual([p[0] for p in got], ["exports[0].path", "exports[1].path"])

    def test_users_list_or_file(self) -> None:
        self.assertEqual(
            cfg.loads("users: /etc/claudefs/users.yaml\n").users, "/etc/claudefs/users.yaml"
        )
        c = cfg.loads("users:\n  - {name: bob, uid: 1000, gid: 100, groups: [10, 20]}\n")
        assert isinstance(c.users, list)
        self.assertEqual(c.users[0].groups, [10, 20])
        got = problems("users:\n  - {name: bob, uid: 1, gid: 1}\n  - {name: bob, uid: 2, gid: 2}\n")
        self.assertIn("listed twice", got[0][2])
        got = problems("users: 5\n")
        self.assertEqual(got[0][0], "users")

    def test_user_required_fields(self) -> None:
        got = problems("users:\n  - {name: bob}\n")
        self.assertEqual(sorted(p[0] for p in got), ["users[0].gid", "users[0].uid"])
        self.assertTrue(all(p[2] == "is required" for p in got))

    def test_secrets_never_echoed(self) -> None:
        """Errors about secret keys do not repeat the value; reprs mask them."""
        secret = "ZZtopSecretValue99"
        got = problems(
            f"admin: {{token: [{secret}]}}\nusers:\n  - {{name: b, uid: 1, gid: 1, nt_hash: {secret}}}\n"
        )
        self.assertEqual(len(got), 2)
        for _, _, msg in got:
            self.assertNotIn(secret, msg)
        c = cfg.loads(f"admin: {{token: {secret}}}\n")
        self.assertNotIn(secret, repr(c))
        self.assertIn("***", repr(c.admin))
        self.assertEqual(list(c.secrets()), [secret])

    def test_overrides_from_flags(self) -> None:
        """Flag values override the file; their problems name the flag."""
        c = cfg.loads(
            "nfs: {bind: 1.2.3.4:2049}\n", overrides={"nfs.bind": ("127.0.0.1:3049", "--bind")}
        )
        self.assertEqual((c.nfs.bind.host, c.nfs.bind.port), ("127.0.0.1", 3049))
        got = problems("", overrides={"s3.bind": ("0.0.0.0:70000", "--bind")})
        self.assertEqual(got, [("s3.bind", "--bind", "port 70000 is out of range 0..65535")])
        err = ConfigError([cfg.Problem("s3.bind", "--bind", "bad")], "f.yaml")
        self.assertEqual(str(err), "f.yaml (--bind): s3.bind: bad")

    def test_sizes(self) -> None:
        self.assertEqual(parse_size("5MiB"), 5 * 1024 * 1024)
        self.assertEqual(parse_size("10GB"), 10 * 1000**3)
        self.assertEqual(parse_size("7"), 7)
        self.assertRaises(ValueError, parse_size, "5 parsecs")
        c = cfg.loads("s3: {multipart_chunk_min: 8MiB}\n")
        self.assertEqual(c.s3.multipart_chunk_min, 8 * 1024 * 1024)
        got = problems("s3: {multipart_chunk_min: lots}\n")
        self.assertEqual(got[0][0], "s3.multipart_chunk_min")


class ListenTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """Every way of writing a listener gives a Twisted endpoint description."""
        for raw, desc, host, port in [
            (
                {"addr": "127.0.0.1", "port": 2049},
                "tcp:port=2049:interface=127.0.0.1",
                "127.0.0.1",
                2049,
            ),
            ({"port": 5}, "tcp:port=5:interface=0.0.0.0", "0.0.0.0", 5),
            (":9000", "tcp:port=9000:interface=0.0.0.0", "0.0.0.0", 9000),
            ("[::1]:9000", "tcp6:port=9000:interface=\\:\\:1", "::1", 9000),
            (7000, "tcp:port=7000:interface=0.0.0.0", "0.0.0.0", 7000),
            ("tcp:2049:interface=127.0.0.1", "tcp:2049:interface=127.0.0.1", "127.0.0.1", 2049),
            ("unix:/tmp/x.sock:mode=600", "unix:/tmp/x.sock:mode=600", None, None),
        ]:
            c = cfg.loads(yaml.safe_dump({"nfs": {"bind": raw}}))
            self.assertEqual(
                (c.nfs.bind.description, c.nfs.bind.host, c.nfs.bind.port), (desc, host, port), raw
            )

    def test_bad_forms(self) -> None:
        for raw in [
            "nonsense",
            "ftp:21",
            "host.example:2049",
            "1.2.3.4:port",
            "tcp:abc",
            True,
            {"addr": "1.2.3.4", "port": "x"},
            {"address": "1.2.3.4"},
            "unix:",
            [1],
        ]:
            got = problems(yaml.safe_dump({"smb": {"bind": raw}}))
            self.assertTrue(got, raw)
            self.assertTrue(got[0][0].startswith("smb.bind"), (raw, got))

    def test_ssl_files_checked(self) -> None:
        got = problems("s3: {bind: 'ssl:9000:privateKey=/nonexistent.pem'}\n")
        self.assertIn("privateKey file does not exist", got[0][2])

    def test_rdma_refused_without_a_parser(self) -> None:
        """
        An rdma: listener is refused by validation, naming the key, when no rdma
        endpoint parser is installed (start resolves listeners through those
        same plugins, so it would refuse it too).
        """
        self.patch(cfg, "rdma_endpoints_available", lambda: False)
        got = problems("nfs: {bind: 'rdma:20049:device=mlx5_0'}\n")
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0][0], "nfs.bind")
        self.assertIn("rdma: listeners are not available in this build", got[0][2])

    def test_rdma_accepted_with_a_parser(self) -> None:
        """Once an rdma endpoint parser plugin is installed, an rdma: listener validates."""
        self.patch(cfg, "rdma_endpoints_available", lambda: True)
        c = cfg.loads("nfs: {bind: 'rdma:20049:device=mlx5_0'}\n")
        self.assertEqual(
            (c.nfs.bind.description, c.nfs.bind.port), ("rdma:20049:device=mlx5_0", 20049)
        )

    def test_rdma_availability_follows_the_plugins(self) -> None:
        """rdma_endpoints_available asks the plugin system serverFromString uses."""
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.testing import MemoryReactor

        try:
            serverFromString(MemoryReactor(), "rdma:20049")
        except ValueError:
            parses = False
        else:
            parses = True
        self.assertEqual(cfg.rdma_endpoints_available(), parses)

    def test_loopback(self) -> None:
        self.assertTrue(Listen.tcp("127.0.0.1", 1).is_loopback)
        self.assertTrue(Listen.tcp("::1", 1).is_loopback)
        self.assertFalse(Listen.tcp("0.0.0.0", 1).is_loopback)
        self.assertTrue(Listen("unix:/x").is_loopback)

    def test_with_port(self) -> None:
        self.assertEqual(
            Listen.tcp("127.0.0.1", 80).with_port(0).description, "tcp:port=0:interface=127.0.0.1"
        )

    def test_manhole_must_be_loopback(self) -> None:
        keys = self.mktemp()
        open(keys, "w").close()
        got = problems(f"admin:\n  manhole:\n    bind: 0.0.0.0:2222\n    authorized_keys: {keys}\n")
        self.assertEqual(got[0][0], "admin.manhole.bind")
        self.assertIn("loopback", got[0][2])


class NetworkTests(SynchronousTestCase):
    def test_membership(self) -> None:
        c = cfg.loads("exports:\n  - {path: /e, clients: [10.0.0.0/8, '::1']}\n")
        [e] = c.exports
        self.assertTrue(e.allows("10.1.2.3"))
        self.assertTrue(e.allows("::1"))
        self.assertFalse(e.allows("192.168.1.1"))
        self.assertFalse(e.allows("not-an-ip"))

    def test_bad_network(self) -> None:
        got = problems(
            "exports:\n  - path: /e\n    clients:\n      - 10.0.0.0/8\n      - 10.0.0.0/33\n"
        )
        self.assertEqual(
            got, [("exports[0].clients[1]", 5, "'10.0.0.0/33' is not a network (e.g. 10.0.0.0/8)")]
        )


def uncomment(text: str, key: str) -> str:
    """
    The example configuration with its commented-out C{key} block (the
    manhole, the backend's TLS files) switched on in place of C{key: null}.
    """
    lines = text.splitlines()
    start = lines.index(f"  # {key}:")
    end = start + 1
    while lines[end].startswith("  #   "):
        end += 1
    block = ["  " + line[4:] for line in lines[start:end]]
    rest = [line for line in lines[end:] if line != f"  {key}: null"]
    return "\n".join(lines[:start] + block + rest) + "\n"


class ExampleAndReferenceTests(SynchronousTestCase):
    """docs/ stays in step with the schema."""

    def shipped(self) -> str:
        with open(os.path.join(REPO, "docs", "gateway.example.yaml")) as f:
            return f.read()

    def example(self) -> tuple[str, Config]:
        """
        The example with its commented-out manhole block switched on (and its
        key file swapped for one that exists): every key of the schema.
        """
        keys = self.mktemp()
        open(keys, "w").close()
        text = uncomment(uncomment(uncomment(self.shipped(), "manhole"), "tls"), "postgresql")
        path = os.path.join(REPO, "docs", "gateway.example.yaml")
        c = cfg.loads(
            text,
            path,
            {
                "admin.manhole.authorized_keys": (keys, "test"),
                **{f"backend.tls.{k}": (keys, "test") for k in ("cert", "key", "ca")},
            },
        )
        return text, c

    def test_example_validates_as_shipped(self) -> None:
        """docs/gateway.example.yaml is valid as it ships: it names no file that does not exist."""
        c = cfg.loads(self.shipped(), "gateway.example.yaml")
        self.assertIsNone(c.admin.manhole)
        self.assertIsNone(c.backend.tls)

    def test_example_validates(self) -> None:
        """The example with its commented-out blocks switched on is valid (given real files)."""
        _, c = self.example()
        self.assertEqual(c.s3.region, "us-east-1")
        self.assertEqual(c.quota.user_defaults.bytes_hard, 12 * 1024**3)
        assert c.admin.manhole is not None
        self.assertEqual(c.admin.manhole.bind.port, 2222)

    def test_example_has_every_key(self) -> None:
        """Every key of the schema appears in docs/gateway.example.yaml."""
        text, _ = self.example()
        raw = yaml.safe_load(text)
        seen: set[str] = set()

        def visit(node: Any, path: str) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    sub = f"{path}.{k}" if path else k
                    seen.add(sub)
                    visit(v, sub)
            elif isinstance(node, list):
                for item in node:
                    if isinstance(item, dict):
                        visit(item, path + "[]")

        visit(raw, "")
        missing = [k for k in cfg.key_paths() if k not in seen]
        self.assertEqual(missing, [])

    def test_reference_is_generated(self) -> None:
        """docs/configuration.rst is exactly what the schema generates (regenerate: python -m claudefs_gateway.core.config)."""
        with open(os.path.join(REPO, "docs", "configuration.rst")) as f:
            self.assertEqual(f.read(), cfg.reference())

    def test_every_key_documented(self) -> None:
        rows = {k.path: k for k in cfg.walk(Config)}
        undocumented = [p for p, k in rows.items() if not k.doc.strip()]
        self.assertEqual(undocumented, [])


# ---------------------------------------------------------------------------
# One generated test per key: wrong kinds and out-of-range values.

# A valid element for each list of sections, so a bad value can be put beside it.
_ELEMENT: dict[str, dict[str, Any]] = {
    "exports": {"path": "/e"},
    "nfs.exports": {"path": "/e"},
    "users": {"name": "u", "uid": 1, "gid": 1},
    "smb.interfaces": {"name": "eth0", "ip": "10.0.0.1"},
    "metadata_servers": {"address": "m:7001"},
    "nfs.pnfs.advertise": {"data_server": "d:7002", "address": "192.0.2.1"},
}


def _bad_values(tp: Any, md: Any) -> list[Any]:
    """Values of a kind the key cannot take, plus range violations."""
    if _is_union(tp):
        alts = [a for a in get_args(tp) if a is not type(None)]
        if str in alts and any(get_origin(a) is list for a in alts):
            return [5, True]
        tp = alts[0]
    origin = get_origin(tp)
    if origin is Literal:
        return ["no-such-choice", 3]
    if origin is list:
        (item,) = get_args(tp)
        if item is int:
            return [5, ["x"]]
        return [5, "text"]
    if isinstance(tp, type) and issubclass(tp, Listen):
        return [{"port": 70000}, "no-endpoint", True]
    if isinstance(tp, type) and issubclass(tp, Network):
        return ["300.1.1.1/8"]
    if isinstance(tp, type) and attrs.has(tp):
        return [5, "text"]
    if tp is bool:
        return ["maybe", 3]
    if tp is int:
        out: list[Any] = [True, 1.5, "many" if not md.get("size") else "many bytes"]
        if md.get("min") is not None:
            out.append(int(md["min"]) - 1)
        if md.get("max") is not None:
            out.append(int(md["max"]) + 1)
        return out
    if tp is float:
        out = ["soon", False]
        if md.get("min") is not None:
            out.append(md["min"] - 1)
        if md.get("max") is not None:
            out.append(md["max"] + 1)
        return out
    if tp is str:
        return [42, ["a"]]
    raise AssertionError(tp)


def _leaf_cases() -> list[tuple[str, Any, Any]]:
    cases = []

    def visit(cls: type, path: str) -> None:
        hints = _hints(cls)
        for f in attrs.fields(cls):
            sub = f"{path}.{f.name}" if path else f.name
            tp = hints[f.name]
            cases.append((sub, tp, f.metadata))
            inner = [a for a in get_args(tp) if a is not type(None)] if _is_union(tp) else [tp]
            for alt in inner:
                if (
                    isinstance(alt, type)
                    and attrs.has(alt)
                    and not issubclass(alt, Listen | Network)
                ):
                    visit(alt, sub)
                elif get_origin(alt) is list:
                    (item,) = get_args(alt)
                    if isinstance(item, type) and attrs.has(item) and not issubclass(item, Network):
                        visit(item, sub + "[]")

    visit(Config, "")
    return cases


def _document(path: str, value: Any) -> tuple[dict[str, Any], str]:
    """A raw config putting C{value} at C{path}; the concrete error path expected."""
    doc: dict[str, Any] = {}
    node: Any = doc
    concrete = []
    parts = path.split(".")
    prefix = []
    for i, part in enumerate(parts):
        is_list = part.endswith("[]")
        name = part[:-2] if is_list else part
        prefix.append(name)
        last = i == len(parts) - 1
        if is_list:
            element = dict(_ELEMENT[".".join(prefix)])
            node[name] = [element]
            node = element
            concrete.append(f"{name}[0]")
        elif last:
            node[name] = value
            concrete.append(name)
        else:
            child = node.setdefault(name, {})
            if name == "manhole":
                child.setdefault("authorized_keys", __file__)
            node = child
            concrete.append(name)
    return doc, ".".join(concrete)


class EveryKeyTests(SynchronousTestCase):
    """Generated: for each key, each class of bad value is reported at that key's path and line."""


def _make_test(path: str, tp: Any, md: Any) -> Any:
    def test(self: SynchronousTestCase) -> None:
        for bad in _bad_values(tp, md):
            doc, expected = _document(path, bad)
            text = yaml.safe_dump(doc, sort_keys=False)
            got = problems(text)
            matching = [
                p
                for p in got
                if p[0] == expected
                or p[0].startswith(expected + ".")
                or p[0].startswith(expected + "[")
            ]
            self.assertTrue(matching, f"{path} = {bad!r}: no problem at {expected}: {got}")
            where = matching[0][1]
            self.assertIsInstance(where, int, f"{path}: no line number")
            line = text.splitlines()[where - 1]
            leaf = expected.rsplit(".", 1)[-1].split("[")[0]
            self.assertIn(
                leaf,
                line + " " + text.splitlines()[max(0, where - 2)],
                f"{path} = {bad!r}: line {where} is {line!r}",
            )
            if md.get("secret"):
                self.assertFalse(
                    any(str(bad) in p[2] for p in got if isinstance(bad, str) and len(bad) > 3)
                )

    test.__doc__ = (
        f"{path}: values of the wrong kind or out of range are reported at {path} with its line."
    )
    return test


for _path, _tp, _md in _leaf_cases():
    _name = "test_" + _path.replace(".", "__").replace("[]", "_item")
    setattr(EveryKeyTests, _name, _make_test(_path, _tp, _md))
