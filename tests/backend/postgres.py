"""
The scratch PostgreSQL server of the tests: C{scripts/run-tests} starts one
(scripts/_postgres.sh) and names it in C{$CFS_TEST_POSTGRES_DSN}. Each test
gets a schema of its own, dropped afterwards, so tests share one database.

Under CI (C{$CI} set) a missing server is a failure, never a skip.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from twisted.trial.unittest import SkipTest

from claudefs_gateway.backend.postgresql import PgSettings
from claudefs_gateway.core import config as cfg

ENV = "CFS_TEST_POSTGRES_DSN"


def dsn() -> str:
    """The scratch server's connection string; fails under CI, else skips, when there is none."""
    value = os.environ.get(ENV)
    if value:
        return value
    if os.environ.get("CI"):
        raise AssertionError(f"${ENV} is not set: scripts/run-tests starts PostgreSQL and sets it")
    raise SkipTest(f"no PostgreSQL (${ENV}); scripts/run-tests starts one")


def new_schema(test: Any) -> str:
    """A fresh schema name, dropped (with everything in it) when C{test} ends."""
    import psycopg
    from psycopg import sql

    name = "t_" + uuid.uuid4().hex[:16]
    conninfo = dsn()

    def drop() -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))

    test.addCleanup(drop)
    return name


def settings(test: Any, schema: str | None = None, **kw: Any) -> PgSettings:
    return PgSettings(dsn(), schema or new_schema(test), **kw)


def meta_store_config(schema: str, extra: str = "") -> Any:
    """The C{meta_store} section for a meta server on the scratch database."""
    text = (
        "meta_store:\n  type: postgresql\n  postgresql:\n"
        f"    dsn: {dsn()!r}\n    schema: {schema}\n{extra}"
    )
    return cfg.loads(text).meta_store


def meta_store_yaml(schema: str) -> str:
    return (
        "meta_store:\n  type: postgresql\n  postgresql:\n"
        f"    dsn: {dsn()!r}\n    schema: {schema}\n"
    )
