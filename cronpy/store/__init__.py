"""The store: where runs, claims, locks and leadership live (see interfaces.py).

Two backends: SQLite in the state dir with flock locks (`sqlite.py` and `cronpy.locks`: one
host, the embedded default) and PostgreSQL (`postgres.py` with `fleet.py`: one database for a
fleet of hosts, a leader lease and fenced claims). Both run the queries of one SQL core
(`sql.py`); their schemas are the named migrations of `migrations.py`. Callers see only the
protocols of interfaces.py and ask `Capabilities`, never a class. psycopg is imported only
when a PostgreSQL URL is given.
"""

from __future__ import annotations

from pathlib import Path

from cronpy.store.interfaces import (HOST, Backend, Capabilities, Health, JobLock, JobLocks, Leadership, NewRun,
                                     Store)

__all__ = ["HOST", "Backend", "Capabilities", "Health", "JobLock", "JobLocks", "Leadership", "NewRun", "Store",
           "open_backend", "open_store"]


def open_store(url: str | None, state_dir: Path, *, readonly: bool = False, lease: float = 10.0,
               skew: tuple[float, float] | None = None) -> Store:
    """The store named by `url` (PostgreSQL), else the SQLite history of `state_dir`.

    Raises NoHistory (read-only, nothing has run yet), StoreTooNew (a newer cronpy's schema:
    nothing is changed), StoreUnavailable/StoreUnreachable (it cannot be opened or reached).
    """
    if not url:
        # The SQLite history alone: its flock locks (cronpy.locks) serve only writers, and a
        # read-only command saves importing them (issue #16's start-up budget).
        from cronpy.store.sqlite import SqliteStore

        return SqliteStore.open(state_dir, readonly=readonly)
    return open_backend(url, state_dir, readonly=readonly, lease=lease, skew=skew).store


def open_backend(url: str | None, state_dir: Path, *, readonly: bool = False, lease: float = 10.0,
                 skew: tuple[float, float] | None = None) -> Backend:
    """The store with its job locks and leadership: PostgreSQL rows for a URL, else SQLite
    with flock locks in the state dir. `skew`: a fleet's (clock_skew_warning,
    clock_skew_limit) in seconds."""
    if url:
        from cronpy.store.postgres import PgStore

        pg = PgStore(url, lease=lease, readonly=readonly, skew=skew)
        return Backend(pg, pg.locks, pg.leadership)
    from cronpy.locks import Locks
    from cronpy.store.sqlite import SqliteStore

    history = SqliteStore.open(state_dir, readonly=readonly)
    locks = Locks(state_dir)
    return Backend(history, locks, locks.leadership())
