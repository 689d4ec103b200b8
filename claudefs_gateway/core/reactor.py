# -*- test-case-name: tests.core.test_reactor -*-
"""
The reactor our processes run on: Twisted's epoll reactor without the legacy
log context around each ready descriptor.

Twisted's C{EPollReactor.doPoll} calls every ready descriptor's
C{_doReadOrWrite} through C{twisted.python.log.callWithLogger}, which asks the
selectable for its C{logPrefix()}, copies the legacy log context into a new
dict and runs the call inside C{twisted.python.context.call}: a few
microseconds per event that only feed the legacy C{"system"} prefix. We log
through C{twisted.logger} (L{claudefs_gateway.core.log}), whose observers never
print that prefix, and py-spy put the wrapper at 3-5 % of the samples of the
meta server and of a worker serving a client, 11 % of an idle worker woken by
change events (docs/workers.rst).

The subclass keeps the stock loop's logic and its error handling:
C{_doReadOrWrite} itself logs an exception raised by C{doRead}/C{doWrite}
(a protocol's C{dataReceived}) and drops that connection, and what escapes it
(a C{connectionLost} that raises) is logged here as C{callWithLogger} did, so
one bad descriptor never costs the other events of the same poll.

L{install} picks this reactor for C{cfs-gateway} (its workers and its
meta/data servers run the same command line) and falls back to Twisted's
default reactor where C{select.epoll} does not exist. C{twistd} keeps its own
choice: C{twistd --reactor cfs-epoll} selects this one (twisted/plugins).
"""

from __future__ import annotations

import select
import sys
from typing import Any

from twisted.python import log

__all__ = ["install"]

if hasattr(select, "epoll"):
    from twisted.internet import epollreactor

    class EPollReactor(epollreactor.EPollReactor):
        """C{EPollReactor} whose poll loop calls C{_doReadOrWrite} directly."""

        def doPoll(self, timeout: float | None) -> None:  # noqa: N802 - Twisted's name
            if timeout is None:
                timeout = -1  # Wait indefinitely.
            try:
                events = self._poller.poll(timeout, len(self._selectables))
            except InterruptedError:
                return
            selectables = self._selectables
            drdw = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue
                try:
                    drdw(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:
                    log.err()

        doIteration = doPoll  # noqa: N815 - Twisted's name

    __all__ += ["EPollReactor"]


def install() -> Any:
    """
    Install our reactor as C{twisted.internet.reactor}, or Twisted's default
    where epoll is missing; return the reactor in use. A reactor installed
    already (a test harness, C{twistd --reactor}) is kept as it is.
    """
    if "twisted.internet.reactor" in sys.modules:
        from twisted.internet import reactor as current

        return current
    if hasattr(select, "epoll"):
        from twisted.internet.main import installReactor

        reactor = EPollReactor()
        installReactor(reactor)
        return reactor
    from twisted.internet import default

    default.install()
    from twisted.internet import reactor as installed

    return installed
