"""
``python -m tests.conformance.run [SUITE ...]``: run the conformance suites.

Every ``suite_<name>.py`` beside this file is one suite; with no argument all
of them run, one after another (each with a gateway of its own). The last
line is ``N passed, N failed`` over all of them, as ``scripts/run-tests``
expects; the exit status is 0 only when nothing failed.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback

from tests.conformance.framework import (
    HERE,
    Context,
    Tally,
    apt_install,
    compare,
    load_expected,
    scratch,
)


def available() -> list[str]:
    return sorted(p.stem[len("suite_") :] for p in HERE.glob("suite_*.py"))


def run_one(name: str) -> Tally:
    module = importlib.import_module(f"tests.conformance.suite_{name.replace('-', '_')}")
    suite = module.SUITE
    t0 = time.monotonic()

    def log(text: str) -> None:
        print(f"[{name} {time.monotonic() - t0:6.1f}s] {text}", flush=True)

    try:
        apt_install(suite.apt)
        results = suite.run(Context(name, scratch(name), log))
    except Exception as e:
        traceback.print_exc()
        tally = Tally(name, error=f"{type(e).__name__}: {e}")
        tally.failed.append("(the suite did not run)")
        return tally
    tally = compare(name, results, load_expected(name))
    for test in tally.failed:
        log(f"UNEXPECTED {test}")
    for test in tally.fixed:
        log(f"now passes, remove from expected/{name}.txt: {test}")
    log(f"done in {time.monotonic() - t0:.0f}s")
    return tally


def main(argv: list[str]) -> int:
    names = argv or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"unknown suites: {unknown}; have {available()}")
        print("0 passed, 1 failed")
        return 1
    tallies = [run_one(n) for n in names]
    print()
    for t in tallies:
        print(t.line())
    passed = sum(t.passed for t in tallies)
    failed = sum(len(t.failed) for t in tallies)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
