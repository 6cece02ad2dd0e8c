"""Kept for imports of the old layout: the PostgreSQL store is cronpy.store.postgres now."""

from cronpy.store.postgres import PgStore, redact

__all__ = ["PgStore", "redact"]
