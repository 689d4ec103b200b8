"""
Samba's own conformance suite, smbtorture (Debian ``samba-testsuite``), over
the eighteen ``smb2.*`` suites PEERS.md names.

Each suite runs as its own process under ``timeout``, so one that hangs ends
at ``PER_SUITE_TIMEOUT`` and only its unfinished tests count as failed;
results come from smbtorture's subunit stream (``--format=subunit``) read
with python-subunit. A test id is ``smb2.<suite>.<test>`` as smbtorture names
it with ``--fullname``.
"""

from __future__ import annotations

import io
import os
import subprocess
import time

import subunit
import testtools

from tests.conformance.framework import Context, Results, Suite

SUITES = tuple(
    os.environ.get(
        "CFS_SMBTORTURE_SUITES",
        "smb2.connect smb2.read smb2.rw smb2.create smb2.dir smb2.getinfo smb2.setinfo"
        " smb2.lock smb2.session smb2.oplock smb2.lease smb2.durable-open"
        " smb2.durable-v2-open smb2.multichannel smb2.credits smb2.compound"
        " smb2.compound_find smb2.ioctl",
    ).split()
)
#: Seconds one suite may run before it is killed (its unfinished tests fail).
PER_SUITE_TIMEOUT = int(os.environ.get("CFS_SMBTORTURE_TIMEOUT", "300"))
USER = "torture"
PASSWORD = "Torture-Pass1"
# NT hashes (MD4 of the UTF-16LE password), written out: hashlib's MD4 may be absent.
NT_HASH = "88a0dc63232ab0b44b356a277bbe8d64"
# A second user, for the tests that bind or reconnect as someone else.
USER2 = "torture2"
PASSWORD2 = "Torture-Pass2"
NT_HASH2 = "23808a85e44000ea9ebf22da1711c751"

CONFIG = f"""
users:
  - name: {USER}
    uid: 1000
    gid: 1000
    nt_hash: {NT_HASH}
  - name: {USER2}
    uid: 1001
    gid: 1001
    nt_hash: {NT_HASH2}
exports:
  - path: /share
    name: share
    root_squash: false
    dir_uid: 1000
    dir_gid: 1000
    dir_mode: 0777
    protocols: [smb, nfs]
  # A share the users may connect to but not use (smbtorture's torture:noperm_share).
  - path: /noperm
    name: noperm
    dir_uid: 0
    dir_gid: 0
    dir_mode: 0
    protocols: [smb]
smb:
  directory_leases: true
  multichannel:
    enabled: true
    max_channels: 32
leases:
  recall_timeout_secs: 35
"""


class _Collect(testtools.StreamResult):
    """Final status of each test id from a subunit v2 stream."""

    def __init__(self) -> None:
        super().__init__()
        self.results: dict[str, str] = {}
        self.started: set[str] = set()

    def status(self, test_id=None, test_status=None, **kwargs):  # type: ignore[no-untyped-def]
        if test_id is None or test_status is None:
            return
        if test_status == "inprogress":
            self.started.add(test_id)
        elif test_status in ("success", "xfail"):
            self.results[test_id] = "pass"
        elif test_status == "skip":
            self.results[test_id] = "skip"
        elif test_status in ("fail", "uxsuccess"):
            self.results[test_id] = "fail"


def parse(stream: bytes) -> tuple[dict[str, str], set[str]]:
    """
    Results of one smbtorture subunit (v1) stream: C{test id -> outcome}, and
    the ids that started but never finished (a killed or crashed run).
    """
    out = io.BytesIO()
    v2 = subunit.StreamResultToBytes(out)
    # smbtorture writes subunit v1 text; python-subunit's v1 reader turns it into v2.
    server = subunit.TestProtocolServer(
        testtools.ExtendedToStreamDecorator(v2), stream=io.BytesIO(), forward_stream=None
    )
    for line in io.BytesIO(stream):
        server.lineReceived(line)
    server.lostConnection()
    out.seek(0)
    collect = _Collect()
    subunit.ByteStreamToStreamResult(out, non_subunit_name="stdout").run(collect)
    unfinished = collect.started - set(collect.results)
    return collect.results, unfinished


#: A continuously available share (``ca: true``) for smbtorture's persistent
#: handle tests, served by a gateway of its own (so the 18 suites above see a
#: server without one, as before); their results are named ``ca/<test id>``.
CA_CONFIG = CONFIG.replace(
    "exports:\n",
    "exports:\n  - {path: /ca, name: cashare, root_squash: false, dir_uid: 1000,"
    " dir_gid: 1000, dir_mode: 0777, protocols: [smb], ca: true}\n",
)
CA_TESTS = tuple(
    os.environ.get(
        "CFS_SMBTORTURE_CA_TESTS",
        "smb2.durable-v2-open.persistent-open-oplock smb2.durable-v2-open.persistent-open-lease",
    ).split()
)


def run(ctx: Context) -> Results:
    results: dict[str, str] = {}
    with ctx.gateway(CONFIG) as gw:
        results.update(_run_suites(ctx, gw.port("smb"), "share", SUITES))
    if CA_TESTS:
        with ctx.gateway(CA_CONFIG) as gw:
            got = _run_suites(ctx, gw.port("smb"), "cashare", CA_TESTS)
            results.update({f"ca/{test}": outcome for test, outcome in got.items()})
    return results


def _run_suites(ctx: Context, port: int, share: str, suites: tuple[str, ...]) -> dict[str, str]:
    """Each suite (or test) of C{suites} against C{share}, each in its own smbtorture run."""
    results: dict[str, str] = {}
    for suite in suites:
        t0 = time.monotonic()
        argv = [
            "timeout",
            "-k",
            "10",
            str(PER_SUITE_TIMEOUT),
            "smbtorture",
            f"//127.0.0.1/{share}",
            "-p",
            str(port),
            "-U",
            f"{USER}%{PASSWORD}",
            "--fullname",
            "--format=subunit",
            f"--option=torture:user2name={USER2}",
            f"--option=torture:user2password={PASSWORD2}",
            "--option=torture:noperm_share=noperm",
            suite,
        ]
        proc = subprocess.run(argv, capture_output=True, timeout=PER_SUITE_TIMEOUT + 60)
        (ctx.workdir / f"{suite}.subunit").write_bytes(proc.stdout)
        (ctx.workdir / f"{suite}.stderr").write_bytes(proc.stderr)
        got, unfinished = parse(proc.stdout)
        for test in unfinished:
            got[test] = "fail"
        if proc.returncode == 124:
            got[f"{suite}.(timeout)"] = "fail"
        elif not got:
            got[f"{suite}.(no result)"] = "fail"
        results.update(got)
        passed = sum(1 for v in got.values() if v == "pass")
        ctx.log(
            f"{suite}: {passed} of {len(got)} passed in {time.monotonic() - t0:.0f}s"
            f" (exit {proc.returncode})"
        )
    return results


SUITE = Suite("smbtorture", run, apt=("samba-testsuite",))
