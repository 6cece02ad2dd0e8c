"""Every schema change, named and in order, one list per dialect.

A database records how many of its dialect's migrations it has run (SQLite: PRAGMA
user_version; PostgreSQL: cronpy.schema_version). Opening it runs the rest, in one
transaction; a database that has run more than this cronpy knows (a newer cronpy migrated
it) is refused with StoreTooNew and left untouched. Append only: never edit a shipped one.
"""

from __future__ import annotations

from cronpy.store.sql import CLAIM_WHERE, CLAIMED_SQL, FINISHED_SQL

SQLITE: list[tuple[str, str]] = [
    ("runs", f"""
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        status TEXT NOT NULL,
        trigger TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 1,
        scheduled_for REAL,
        started_at REAL NOT NULL,
        finished_at REAL,
        duration REAL,
        exit_code INTEGER,
        error TEXT,
        output TEXT,
        result TEXT,
        pid INTEGER,
        host TEXT,
        runner_pid INTEGER,
        parent_id INTEGER
    );
    CREATE UNIQUE INDEX runs_claim ON runs (job, scheduled_for) WHERE {CLAIM_WHERE};
    CREATE INDEX runs_job_status ON runs (job, status, id);
    CREATE INDEX runs_status ON runs (status, id);
    CREATE INDEX runs_started ON runs (started_at);
    """),
    # `stats` in O(jobs), not O(rows): per (job, status) totals kept by triggers, and the
    # finished durations indexed by job for percentiles and max.
    ("job_totals", f"""
    CREATE INDEX runs_finished_duration ON runs (job, duration) WHERE status IN ({FINISHED_SQL});
    CREATE TABLE job_totals (
        job TEXT NOT NULL,
        status TEXT NOT NULL,
        runs INTEGER NOT NULL,
        duration_sum REAL NOT NULL,
        last_id INTEGER NOT NULL,
        PRIMARY KEY (job, status)
    ) WITHOUT ROWID;
    INSERT INTO job_totals (job, status, runs, duration_sum, last_id)
        SELECT job, status, count(*), coalesce(sum(duration), 0), max(id) FROM runs GROUP BY job, status;
    CREATE TRIGGER runs_totals_insert AFTER INSERT ON runs BEGIN
        INSERT INTO job_totals (job, status, runs, duration_sum, last_id)
            VALUES (NEW.job, NEW.status, 1, coalesce(NEW.duration, 0), NEW.id)
            ON CONFLICT (job, status) DO UPDATE SET runs = runs + 1,
                duration_sum = duration_sum + excluded.duration_sum, last_id = max(last_id, excluded.last_id);
    END;
    CREATE TRIGGER runs_totals_update AFTER UPDATE OF status, duration ON runs BEGIN
        UPDATE job_totals SET runs = runs - 1, duration_sum = duration_sum - coalesce(OLD.duration, 0)
            WHERE job = OLD.job AND status = OLD.status;
        INSERT INTO job_totals (job, status, runs, duration_sum, last_id)
            VALUES (NEW.job, NEW.status, 1, coalesce(NEW.duration, 0), NEW.id)
            ON CONFLICT (job, status) DO UPDATE SET runs = runs + 1,
                duration_sum = duration_sum + excluded.duration_sum, last_id = max(last_id, excluded.last_id);
    END;
    CREATE TRIGGER runs_totals_delete AFTER DELETE ON runs BEGIN
        UPDATE job_totals SET runs = runs - 1, duration_sum = duration_sum - coalesce(OLD.duration, 0)
            WHERE job = OLD.job AND status = OLD.status;
    END;
    """),
    # Operator controls that outlive a runner: paused jobs and cancel requests.
    ("operator_controls", """
    CREATE TABLE paused (job TEXT PRIMARY KEY, since REAL NOT NULL, host TEXT, pid INTEGER) WITHOUT ROWID;
    CREATE TABLE cancel_requests (run_id INTEGER PRIMARY KEY, at REAL NOT NULL);
    CREATE INDEX runs_job_id ON runs (job, id);
    """),
    # The leader looks for runs left by dead runners every few seconds, not only at start:
    # a partial index keeps that O(runs in progress) however long the history.
    ("running_by_host", """
    CREATE INDEX runs_running_host ON runs (host, runner_pid) WHERE status = 'running';
    """),
]

POSTGRES: list[tuple[str, str]] = [
    # runs (as in SQLite, with real timestamps and the claim's epoch), the lease, job locks,
    # runner heartbeats, operator controls, and the fencing trigger.
    ("fleet", f"""
    CREATE TABLE cronpy.runs (
        id bigserial PRIMARY KEY,
        job text NOT NULL,
        status text NOT NULL,
        trigger text NOT NULL,
        attempt integer NOT NULL DEFAULT 1,
        scheduled_for timestamptz,
        started_at timestamptz NOT NULL,
        finished_at timestamptz,
        duration double precision,
        exit_code integer,
        error text,
        output text,
        result text,
        pid integer,
        host text,
        runner_pid integer,
        parent_id bigint,
        epoch bigint
    );
    CREATE UNIQUE INDEX runs_claim ON cronpy.runs (job, scheduled_for) WHERE {CLAIM_WHERE};
    CREATE INDEX runs_job_id ON cronpy.runs (job, id);
    CREATE INDEX runs_job_status_id ON cronpy.runs (job, status, id);
    CREATE INDEX runs_status_id ON cronpy.runs (status, id);
    CREATE INDEX runs_started ON cronpy.runs (started_at);

    CREATE TABLE cronpy.leader (
        id integer PRIMARY KEY CHECK (id = 1),
        epoch bigint NOT NULL,
        holder text,
        host text,
        pid integer,
        since timestamptz,
        expires_at timestamptz NOT NULL
    );
    INSERT INTO cronpy.leader (id, epoch, expires_at) VALUES (1, 0, '-infinity');

    CREATE TABLE cronpy.job_locks (
        job text PRIMARY KEY,
        holder text NOT NULL,
        host text NOT NULL,
        pid integer NOT NULL,
        run_id bigint,
        since timestamptz NOT NULL,
        expires_at timestamptz NOT NULL
    );
    CREATE TABLE cronpy.runners (
        holder text PRIMARY KEY,
        host text NOT NULL,
        pid integer NOT NULL,
        role text NOT NULL,
        started_at timestamptz NOT NULL,
        last_seen timestamptz NOT NULL
    );
    CREATE TABLE cronpy.paused (job text PRIMARY KEY, since timestamptz NOT NULL, host text, pid integer);
    CREATE TABLE cronpy.cancel_requests (run_id bigint PRIMARY KEY, at timestamptz NOT NULL);

    CREATE FUNCTION cronpy.fence_claim() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.attempt = 1 AND NEW.trigger IN ({CLAIMED_SQL}) THEN
            -- FOR SHARE: a takeover (an UPDATE of this row) waits until this claim commits.
            PERFORM 1 FROM cronpy.leader
                WHERE id = 1 AND epoch = NEW.epoch AND expires_at > clock_timestamp() FOR SHARE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'claim of % at % refused: epoch % does not hold the leader lease',
                    NEW.job, NEW.scheduled_for, NEW.epoch USING ERRCODE = 'CPF01';
            END IF;
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER runs_fence BEFORE INSERT ON cronpy.runs
        FOR EACH ROW EXECUTE FUNCTION cronpy.fence_claim();
    """),
    # `stats` over all of history without sorting it: finished durations indexed by job,
    # walked from the nearer end for each nearest rank.
    ("finished_duration", f"""
    CREATE INDEX runs_finished_duration ON cronpy.runs (job, duration)
        WHERE status IN ({FINISHED_SQL}) AND duration IS NOT NULL;
    """),
    ("running_by_host", """
    CREATE INDEX runs_running_host ON cronpy.runs (host, runner_pid) WHERE status = 'running';
    """),
]
