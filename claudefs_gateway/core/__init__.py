"""
What every layer shares: configuration, logging, metrics, health, the drain and limits.

Also the listeners, thread pools and client table, and the one L{runtime.Core}
per process that carries them all to the front ends.
"""
