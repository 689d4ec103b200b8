# -*- test-case-name: tests.test_errors -*-
"""
The one exception family that crosses layer boundaries.

Front ends map these to their own status codes in one table each (STYLE.md §7);
nothing below the front ends knows any protocol's codes.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from twisted.internet import defer


class GatewayError(Exception):
    """Root of every error this package raises on purpose."""


class ProtocolError(GatewayError):
    """A peer sent bytes that do not parse as the protocol says they must."""


class Timeout(defer.TimeoutError, GatewayError):
    """An operation ran past its deadline."""


class BackendUnavailable(GatewayError):
    """The backend cannot be reached now (circuit open, pool exhausted); try later."""


class NotBuilt(GatewayError):
    """
    A component named in the configuration does not exist in this build.

    Raised instead of pretending: starting a protocol that is not built fails
    loudly with this message.
    """


@attrs.frozen
class Problem:
    """
    One thing wrong with a configuration.

    @ivar path: dotted key path, e.g. C{connection_pool.max_per_node}.
    @ivar where: a line number in the file, or a label such as C{"--bind"} for a
        value that came from the command line, or L{None} if unknown.
    @ivar message: what is wrong, never echoing a secret value.
    """

    path: str
    where: int | str | None
    message: str

    def format(self, source: str) -> str:
        if isinstance(self.where, int):
            loc = f"{source}:{self.where}"
        elif self.where is not None:
            loc = f"{source} ({self.where})"
        else:
            loc = source
        key = self.path or "(top level)"
        return f"{loc}: {key}: {self.message}"


class ConfigError(GatewayError):
    """A configuration does not validate; carries every problem found in one pass."""

    def __init__(self, problems: Sequence[Problem], source: str = "<config>") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(p.format(self.source) for p in self.problems)
