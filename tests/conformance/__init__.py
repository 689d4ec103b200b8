"""
Third-party conformance suites run against a gateway of this checkout.

Not trial tests: ``python -m tests.conformance.run`` (called by
``scripts/run-tests`` after trial) starts a gateway per suite, runs the suite
from ``../shared/suites`` (or ``$CFS_SUITES``) or the Debian package that
carries it, compares each result with the checked-in list of expected
failures in ``expected/<suite>.txt`` and prints ``N passed, N failed``.
See ``docs/testing.rst``.
"""
