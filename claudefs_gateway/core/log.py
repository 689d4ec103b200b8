# -*- test-case-name: tests.core.test_log -*-
"""
Logging through twisted.logger, with a level from configuration and no secrets.

Our modules log through L{Logger}, a twisted.logger.Logger whose events pass a
level check (cheap: below the level, nothing is even built) and a scrubber that
replaces any configured secret with C{***} before the event reaches the global
publisher. That holds however the process was started: under plain C{twistd} the
level and the scrubbing apply to our events; with C{cfs-gateway start} or
C{twistd --logger=claudefs_gateway.core.log.json_stdout} the output observer
applies them to Twisted's own events as well.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEventAsClassicLogText,
    globalLogPublisher,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.logger import Logger as _TwistedLogger

from zope.interface import implementer

__all__ = [
    "Logger",
    "LEVELS",
    "set_level",
    "set_secrets",
    "add_secret",
    "add_secrets",
    "make_observer",
    "human_stdout",
    "json_stdout",
    "scrub",
    "Sampler",
    "debugging",
]

LEVELS: dict[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}
_ORDER = {lvl: i for i, lvl in enumerate(LogLevel.iterconstants())}

MASK = "***"


class _Settings:
    """Process-wide log settings: one gateway per process (STYLE.md §10)."""

    def __init__(self) -> None:
        self.level = LogLevel.info
        self.rank = _ORDER[LogLevel.info]
        self.secrets: tuple[str, ...] = ()


_settings = _Settings()


def set_level(level: str | LogLevel) -> None:
    """Set the least severe level written, by name (C{"debug"}) or L{LogLevel}."""
    lvl = LEVELS[level] if isinstance(level, str) else level
    _settings.level = lvl
    _settings.rank = _ORDER[lvl]


def set_secrets(secrets: Iterable[str]) -> None:
    """Replace the set of strings that must never appear in a log event."""
    _settings.secrets = tuple(
        sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)
    )


def add_secret(secret: str) -> None:
    """Add one secret (e.g. a key created at run time) to the scrub list."""
    add_secrets([secret])


def add_secrets(secrets: Iterable[str]) -> None:
    """Add secrets (e.g. those of a reloaded users file) to the scrub list."""
    set_secrets((*_settings.secrets, *secrets))


def _scrub_value(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for s in secrets:
            if s in value:
                value = value.replace(s, MASK)
        return value
    if isinstance(value, bytes):
        for s in secrets:
            b = s.encode("utf-8", "surrogateescape")
            if b in value:
                value = value.replace(b, MASK.encode())
        return value
    if isinstance(value, list | tuple):
        return type(value)(_scrub_value(v, secrets) for v in value)
    if isinstance(value, dict):
        return {k: _scrub_value(v, secrets) for k, v in value.items()}
    return value


def scrub(event: dict[str, Any]) -> dict[str, Any]:
    """A copy of C{event} with every configured secret masked, or the event itself if none."""
    secrets = _settings.secrets
    if not secrets:
        return event
    out: dict[str, Any] | None = None
    for key, value in event.items():
        if key in ("log_logger", "log_source", "log_level", "log_time", "log_namespace"):
            continue
        if key == "log_failure":
            continue
        new = _scrub_value(value, secrets)
        if new is not value and new != value:
            if out is None:
                out = dict(event)
            out[key] = new
    return out if out is not None else event


@implementer(ILogObserver)
class _Publisher:
    """Where our Loggers send events: scrubbed, then the global publisher."""

    def __call__(self, event: dict[str, Any]) -> None:
        globalLogPublisher(scrub(event))


publisher = _Publisher()


class Logger(_TwistedLogger):
    """
    twisted.logger.Logger with the gateway's level check and secret scrubbing.

    Use it exactly like Twisted's, as a class attribute: C{_log = Logger()}.
    """

    def __init__(
        self,
        namespace: str | None = None,
        source: object | None = None,
        observer: ILogObserver | None = None,
    ) -> None:
        if namespace is None:
            # Twisted infers the namespace from its caller's frame, which would
            # be this module; use our caller's instead.
            namespace = sys._getframe(1).f_globals.get("__name__", "<unknown>")
        super().__init__(namespace, source, publisher if observer is None else observer)

    def __get__(self, instance: object, owner: type | None = None) -> Logger:
        # Twisted's makes a Logger through __init__ (and a dotted name) at
        # every C{self._log}; this is the same three attributes without the
        # calls (a LockTable's open and release each paid it per event of a
        # --workers meta server: docs/workers.rst "Where the CPU of a create went").
        assert owner is not None
        log: Logger = object.__new__(type(self))
        names = self.__dict__.get("_names")
        if names is None:
            names = self.__dict__["_names"] = {}
        namespace = names.get(owner)
        if namespace is None:
            namespace = names[owner] = f"{owner.__module__}.{owner.__name__}"
        log.namespace = namespace
        log.source = owner if instance is None else instance
        log.observer = self.observer
        return log

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:  # noqa: A002
        if _ORDER.get(level, 99) < _settings.rank:
            return
        super().emit(level, format, **kwargs)


def debugging() -> bool:
    """Whether debug events are written: a hot path skips building their fields otherwise."""
    return _settings.rank <= _ORDER[LogLevel.debug]


@implementer(ILogFilterPredicate)
class _LevelPredicate:
    """Drops events below the configured level (read at each event, so it can change)."""

    def __call__(self, event: dict[str, Any]) -> PredicateResult:
        level = event.get("log_level", LogLevel.info)
        if _ORDER.get(level, 99) < _settings.rank:
            return PredicateResult.no
        return PredicateResult.maybe


@implementer(ILogObserver)
class _Scrubbing:
    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        self._observer(scrub(event))


def make_observer(fmt: str, stream: IO[str]) -> ILogObserver:
    """
    An observer writing C{fmt} (C{"human"} or C{"json"}) lines to C{stream},
    filtered by the configured level and scrubbed of secrets.

    JSON is one object per line (no RFC 7464 record separator), the shape of
    C{twisted.logger.eventAsJSON}, so C{jq} and log shippers read it as is.
    """
    if fmt == "json":
        inner = jsonFileLogObserver(stream, recordSeparator="")
    else:
        inner = textFileLogObserver(stream)
    filtered = FilteringLogObserver(
        inner, [_LevelPredicate(), LogLevelFilterPredicate(LogLevel.debug)]
    )
    return _Scrubbing(filtered)


def human_stdout() -> ILogObserver:
    """For C{twistd --logger=claudefs_gateway.core.log.human_stdout}."""
    return make_observer("human", sys.stdout)


def json_stdout() -> ILogObserver:
    """For C{twistd --logger=claudefs_gateway.core.log.json_stdout}: JSON lines on stdout."""
    return make_observer("json", sys.stdout)


def format_event(event: dict[str, Any]) -> str:
    """One event as a classic text line (used by tests and the CLI)."""
    return formatEventAsClassicLogText(scrub(event)) or ""


class Sampler:
    """
    Let a repeated event through at most once per C{interval} per key (a
    client's address), so a hostile or broken client's flood of bad input
    costs the log a line a minute, not a line a frame. Every event is still
    counted by the caller's metric.

    @param clock: seconds, monotonic (a Clock's C{seconds} in tests).
    @param max_keys: keys remembered; the oldest is forgotten first, so
        memory stays bounded whoever sends.
    """

    def __init__(
        self,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 4096,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self._seen: OrderedDict[Hashable, list[float]] = OrderedDict()

    def admit(self, key: Hashable) -> int | None:
        """
        Whether to log this event now: None to hold it back, else how many
        events of C{key} were held back since the last one logged.
        """
        now = self.clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        held = int(entry[1]) if entry is not None else 0
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        return held
