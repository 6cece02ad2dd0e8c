"""Kept for imports of the old layout: the SQLite store is cronpy.store.sqlite now."""

from cronpy.store.interfaces import HOST, NewRun
from cronpy.store.sqlite import SqliteStore as History

__all__ = ["HOST", "History", "NewRun"]
