"""The lifecycle's tables in the registry's database (``registry.db`` or PostgreSQL), next to its
own: the jobs, their progress events and the log of retraining-trigger checks; and the job statuses
the ``jobs`` table allows.

Every statement is ``IF NOT EXISTS``: opening a JobStore (models/lifecycle/store.py) on an existing
database changes nothing. Written once for SQLite and PostgreSQL, with ``{serial}``/``{real}`` where
their column types differ (rendered by models/bundle/database.py).
"""

STATUSES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
ACTIVE = ("QUEUED", "RUNNING")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq          {serial},
    job_id       TEXT    NOT NULL UNIQUE,
    status       TEXT    NOT NULL CHECK (status IN ('QUEUED','RUNNING','SUCCEEDED','FAILED','CANCELLED')),
    config       TEXT    NOT NULL,              -- JSON, validated and normalised
    source       TEXT    NOT NULL DEFAULT 'api',
    reason       TEXT    NOT NULL DEFAULT '',   -- why it was started
    created_at   TEXT    NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    stage        TEXT    NOT NULL DEFAULT '',
    percent      {real}  NOT NULL DEFAULT 0,
    message      TEXT    NOT NULL DEFAULT '',
    error        TEXT    NOT NULL DEFAULT '',
    run_id       TEXT,
    run_dir      TEXT,
    pid          INTEGER,
    host         TEXT,
    committed    INTEGER NOT NULL DEFAULT 0,    -- its versions are registered: no cancel any more
    versions     TEXT    NOT NULL DEFAULT '{}', -- component -> version registered
    metrics      TEXT    NOT NULL DEFAULT '{}', -- latest metrics reported
    activation   TEXT    NOT NULL DEFAULT '[]'  -- auto-activation decisions
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS job_events (
    id       {serial},
    job_id   TEXT    NOT NULL,
    at       TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    status   TEXT    NOT NULL,
    stage    TEXT    NOT NULL DEFAULT '',
    percent  {real}  NOT NULL DEFAULT 0,
    message  TEXT    NOT NULL DEFAULT '',
    metrics  TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS job_events_by_job ON job_events (job_id, id);
CREATE TABLE IF NOT EXISTS trigger_checks (
    id           {serial},
    checked_at   TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    data_source  TEXT    NOT NULL,
    should_train INTEGER NOT NULL,
    reasons      TEXT    NOT NULL,              -- JSON list
    details      TEXT    NOT NULL,              -- JSON: counts, ages, thresholds
    job_id       TEXT
);
"""

