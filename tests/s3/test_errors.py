"""Tests for L{claudefs_gateway.s3.errors}: the S3 column of docs/errors.rst."""

from __future__ import annotations

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway import errors
from claudefs_gateway.s3.errors import STATUS, S3Error, from_failure

# docs/errors.rst, S3 column, one row per class.
EXPECTED = {
    errors.NotFound: "NoSuchKey",
    errors.Exists: "PreconditionFailed",
    errors.NotDir: "KeyConflict",
    errors.IsDir: "KeyConflict",
    errors.NotEmpty: "BucketNotEmpty",
    errors.Access: "AccessDenied",
    errors.Perm: "AccessDenied",
    errors.ReadOnly: "AccessDenied",
    errors.NoSpace: "InsufficientStorage",
    errors.DQuot: "QuotaExceeded",
    errors.Stale: "NoSuchKey",
    errors.BadHandle: "InternalError",
    errors.NameTooLong: "KeyTooLongError",
    errors.Inval: "InvalidArgument",
    errors.NotSupp: "NotImplemented",
    errors.IO: "InternalError",
    errors.XDev: "InvalidArgument",
    errors.MLink: "InvalidArgument",
    errors.FBig: "EntityTooLarge",
    errors.Loop: "NoSuchKey",
    errors.NoData: "NoSuchKey",
    errors.Range: "MetadataTooLarge",
    errors.Again: "SlowDown",
    errors.Deadlock: "SlowDown",
    errors.NoLock: "SlowDown",
    errors.Grace: "SlowDown",
    errors.Busy: "OperationAborted",
    errors.BadCookie: "InvalidArgument",
}


class TableTests(SynchronousTestCase):
    def test_every_fs_error(self) -> None:
        """Every FSError subclass maps to the documented S3 code and status."""
        for cls in errors.FS_ERRORS:
            err = from_failure(Failure(cls("detail with /a/path")))
            self.assertEqual(err.code, EXPECTED[cls], cls.__name__)
            self.assertIn(err.status, (400, 403, 404, 409, 412, 500, 501, 503, 507))
            self.assertNotIn("/a/path", err.message)
        self.assertEqual(from_failure(Failure(errors.DQuot())).status, 403)
        self.assertEqual(from_failure(Failure(errors.NotDir())).status, 409)

    def test_context(self) -> None:
        self.assertEqual(
            from_failure(Failure(errors.NotFound()), missing="NoSuchBucket").code, "NoSuchBucket"
        )
        self.assertEqual(
            from_failure(Failure(errors.Exists()), exists="BucketAlreadyOwnedByYou").code,
            "BucketAlreadyOwnedByYou",
        )

    def test_try_later_and_unknown(self) -> None:
        self.assertEqual(from_failure(Failure(errors.BackendUnavailable())).code, "SlowDown")
        self.assertEqual(from_failure(Failure(errors.Timeout())).code, "SlowDown")
        err = from_failure(Failure(ZeroDivisionError()))
        self.assertEqual((err.code, err.status), ("InternalError", 500))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_codes_known(self) -> None:
        self.assertRaises(ValueError, S3Error, "NoSuchThing")
        for code in STATUS:
            self.assertEqual(S3Error(code).status, STATUS[code])
