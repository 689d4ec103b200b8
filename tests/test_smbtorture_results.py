"""The smbtorture driver reads smbtorture's subunit (v1) stream right."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.conformance.suite_smbtorture import parse

STREAM = b"""time: 2024-01-01 00:00:00.000000Z
progress: 4
test: smb2.read.eof
time: 2024-01-01 00:00:00.100000Z
success: smb2.read.eof
test: smb2.read.position
failure: smb2.read.position [
../../source4/torture/smb2/read.c:174: info.all_info2.out.position was 0
]
test: smb2.ioctl.copy-chunk streams
skip: smb2.ioctl.copy-chunk streams [
streams are not supported
]
test: smb2.lock.known
xfail: smb2.lock.known
test: smb2.oplock.batch1
"""


class ParseTests(SynchronousTestCase):
    def test_outcomes(self) -> None:
        """
        Each test gets its outcome; ids may hold spaces; xfail counts as a pass;
        a test cut off by the end of the stream (a killed run) fails.
        """
        results, unfinished = parse(STREAM)
        for test in unfinished:
            results[test] = "fail"
        self.assertEqual(
            results,
            {
                "smb2.read.eof": "pass",
                "smb2.read.position": "fail",
                "smb2.ioctl.copy-chunk streams": "skip",
                "smb2.lock.known": "pass",
                "smb2.oplock.batch1": "fail",
            },
        )

    def test_garbage(self) -> None:
        """Lines that are not subunit (smbtorture's own output) are ignored."""
        results, unfinished = parse(b"Using seed 1\nnot subunit at all\n")
        self.assertEqual((results, unfinished), ({}, set()))
