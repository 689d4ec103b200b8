"""
``python -m tests.hold_gateway CONFIG``: the gateway, started exactly as
``cfs-gateway start`` starts it, plus one test protocol whose requests stay in
flight until the client says so. The shutdown tests use it to watch a drain
wait for a real in-flight request without any timing guesswork.

Protocol (lines): ``hold`` → begins a request, answers ``held``;
``release`` → answers ``released`` and ends it.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from claudefs_gateway.cli import run_foreground
from claudefs_gateway.core import config as cfg
from claudefs_gateway.core.config import Listen


class Hold(LineReceiver):
    delimiter = b"\n"
    held = False

    def connectionMade(self) -> None:
        self.factory.activity.connection_made(self)

    def connectionLost(self, reason: Any = None) -> None:
        if self.held:
            self.factory.activity.end()
        self.factory.activity.connection_lost(self)

    def lineReceived(self, line: bytes) -> None:
        if line == b"hold" and not self.held:
            self.held = True
            self.factory.activity.begin()
            self.sendLine(b"held")
        elif line == b"release" and self.held:
            self.held = False
            self.sendLine(b"released")
            self.factory.activity.end()


def add_hold(root: Any) -> None:
    core = root.core
    factory = Factory.forProtocol(Hold)
    factory.activity = core.drainer.activity("hold")
    parent = MultiService()
    parent.setName("proto:hold")
    parent.setServiceParent(root)
    core.listener(parent, "proto:hold:listen", "hold", Listen.tcp("127.0.0.1", 0), factory)


if __name__ == "__main__":
    sys.exit(run_foreground(cfg.load(sys.argv[1]), protocols=[], customize=add_hold))
