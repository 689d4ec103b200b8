"""Tests for L{claudefs_gateway.core.log}: levels, formats, no secrets."""

from __future__ import annotations

import io
import json

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from claudefs_gateway.core import log


class _Capture:
    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)


class LevelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(log.set_level, "info")
        self.addCleanup(log.set_secrets, [])

    def test_below_level_dropped_at_source(self) -> None:
        """Events below the configured level never reach the publisher."""
        cap = _Capture(self)
        logger = log.Logger(namespace="t")
        log.set_level("warn")
        logger.info("quiet")
        logger.warn("loud")
        self.assertEqual(
            [e["log_format"] for e in cap.events if e.get("log_namespace") == "t"], ["loud"]
        )
        log.set_level("debug")
        logger.debug("now heard")
        self.assertEqual(cap.events[-1]["log_format"], "now heard")

    def test_namespace_is_callers_module(self) -> None:
        self.assertEqual(log.Logger().namespace, __name__)

    def test_class_attribute_logger(self) -> None:
        class Thing:
            _log = log.Logger()

        cap = _Capture(self)
        thing = Thing()
        thing._log.info("hello {x}", x=1)
        self.assertEqual(cap.events[-1]["x"], 1)
        # As Twisted's descriptor: the class's name, the instance (or class) as source.
        self.assertEqual(cap.events[-1]["log_namespace"], f"{__name__}.{Thing.__name__}")
        self.assertIs(cap.events[-1]["log_source"], thing)
        self.assertIsInstance(thing._log, log.Logger)
        Thing._log.warn("from the class")
        self.assertIs(cap.events[-1]["log_source"], Thing)

    def test_debugging(self) -> None:
        """debugging() says whether debug events are written (hot paths skip their fields)."""
        self.addCleanup(log.set_level, "info")
        self.assertFalse(log.debugging())
        log.set_level("debug")
        self.assertTrue(log.debugging())


class ScrubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(log.set_secrets, [])

    def test_secret_masked_in_fields(self) -> None:
        """A configured secret anywhere in an event's fields is replaced by ***."""
        cap = _Capture(self)
        log.set_secrets(["hunter2hunter2"])
        log.Logger(namespace="t").warn(
            "token {tok} in {where}", tok="Bearer hunter2hunter2", where=["x", b"hunter2hunter2"]
        )
        event = cap.events[-1]
        self.assertEqual(event["tok"], "Bearer ***")
        self.assertEqual(event["where"], ["x", b"***"])

    def test_output_observer_scrubs_twisted_events(self) -> None:
        """The stdout observers scrub events that did not come through our Logger."""
        out = io.StringIO()
        obs = log.make_observer("human", out)
        log.set_secrets(["s3cr3t-value"])
        obs(
            {
                "log_format": "got {v}",
                "v": "s3cr3t-value",
                "log_level": LogLevel.info,
                "log_time": 0,
                "log_namespace": "x",
            }
        )
        self.assertIn("got ***", out.getvalue())
        self.assertNotIn("s3cr3t", out.getvalue())

    def test_short_strings_not_treated_as_secrets(self) -> None:
        log.set_secrets(["ab", ""])
        self.assertEqual(log.scrub({"v": "abc"}), {"v": "abc"})


class FormatTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(log.set_level, "info")

    def event(self, level: LogLevel = LogLevel.info) -> dict:
        return {
            "log_format": "hello {who}",
            "who": "world",
            "log_level": level,
            "log_time": 1700000000.0,
            "log_namespace": "ns",
        }

    def test_json_lines(self) -> None:
        """JSON format is one parseable object per line."""
        out = io.StringIO()
        obs = log.make_observer("json", out)
        obs(self.event())
        obs(self.event())
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        parsed = json.loads(lines[0])
        self.assertEqual(parsed["who"], "world")
        self.assertEqual(parsed["log_namespace"], "ns")

    def test_human(self) -> None:
        out = io.StringIO()
        log.make_observer("human", out)(self.event())
        self.assertIn("[ns#info] hello world", out.getvalue())

    def test_output_level_filter(self) -> None:
        out = io.StringIO()
        obs = log.make_observer("human", out)
        log.set_level("error")
        obs(self.event(LogLevel.warn))
        self.assertEqual(out.getvalue(), "")
        obs(self.event(LogLevel.critical))
        self.assertIn("hello world", out.getvalue())


class SamplerTests(SynchronousTestCase):
    """Bad input from one client is logged at most once a minute per client."""

    def test_once_per_interval_per_key(self) -> None:
        now = [0.0]
        s = log.Sampler(interval=60.0, clock=lambda: now[0])
        self.assertEqual(s.admit("10.0.0.1"), 0)
        self.assertIsNone(s.admit("10.0.0.1"))
        self.assertIsNone(s.admit("10.0.0.1"))
        self.assertEqual(s.admit("10.0.0.2"), 0)  # another client is not held back
        now[0] = 59.9
        self.assertIsNone(s.admit("10.0.0.1"))
        now[0] = 60.0
        self.assertEqual(s.admit("10.0.0.1"), 3)  # the three held back are told
        self.assertIsNone(s.admit("10.0.0.1"))

    def test_memory_bounded(self) -> None:
        s = log.Sampler(max_keys=10, clock=lambda: 0.0)
        for i in range(1000):
            self.assertEqual(s.admit(i), 0)
        self.assertEqual(len(s._seen), 10)
