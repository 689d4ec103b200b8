"""claudefs-meta's PostgreSQL store: several meta servers over one database (docs/postgresql.rst)."""

from claudefs_gateway.backend.postgresql.store import PgSettings, PostgresStore, RemoteChange

__all__ = ["PostgresStore", "PgSettings", "RemoteChange"]
