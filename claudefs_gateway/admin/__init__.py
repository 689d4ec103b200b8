"""Operator interfaces beside the protocol stack: admin HTTP and the manhole."""
