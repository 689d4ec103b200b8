"""
claudefs-gateway's test suite (trial).

Hypothesis runs a deterministic profile by default so CI is repeatable; set
CFS_HYPOTHESIS_PROFILE=fuzz for a long randomized run.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=100,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz", deadline=None, max_examples=20000, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("CFS_HYPOTHESIS_PROFILE", "ci"))
