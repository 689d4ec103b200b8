"""
The S3 front end.

Not built yet in this version: starting it explicitly fails with L{NOT_BUILT};
starting every protocol skips it with a warning. Tracked as issue #5.
"""

from __future__ import annotations

from typing import Any

from claudefs_gateway.errors import NotBuilt

BUILT = False
NOT_BUILT = "the S3 front end is not built in this version of claudefs-gateway"


def make_service(core: Any) -> Any:
    raise NotBuilt(NOT_BUILT)
