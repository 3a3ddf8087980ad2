"""The registry database's tables: versions, aliases and the append-only alias history.

``SCHEMA`` is written once for both backends, with ``{serial}``/``{real}`` where their column types
differ (models/bundle/database.py renders it); what makes the history append-only is a trigger,
spelled in each dialect.
"""

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    component     TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    path          TEXT    NOT NULL,  -- relative to the bundles folder when inside it
    content_hash  TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    data_version  TEXT,
    created_at    TEXT    NOT NULL,  -- when the bundle was built (from its manifest)
    registered_at TEXT    NOT NULL,
    metrics       TEXT    NOT NULL DEFAULT '{}',  -- JSON
    PRIMARY KEY (component, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    component  TEXT    NOT NULL,
    alias      TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    changed_at TEXT    NOT NULL,
    PRIMARY KEY (component, alias),
    FOREIGN KEY (component, version) REFERENCES versions (component, version)
);
CREATE TABLE IF NOT EXISTS alias_history (
    id               {serial},
    component        TEXT    NOT NULL,
    alias            TEXT    NOT NULL,
    version          INTEGER NOT NULL,
    previous_version INTEGER,
    action           TEXT    NOT NULL CHECK (action IN ('set', 'rollback')),
    changed_at       TEXT    NOT NULL,
    reason           TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS alias_history_by_alias ON alias_history (component, alias, id);
"""

SQLITE_ONLY = """
CREATE TRIGGER IF NOT EXISTS alias_history_no_update BEFORE UPDATE ON alias_history
BEGIN SELECT RAISE(ABORT, 'alias_history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS alias_history_no_delete BEFORE DELETE ON alias_history
BEGIN SELECT RAISE(ABORT, 'alias_history is append-only'); END;
"""

POSTGRES_ONLY = """
CREATE OR REPLACE FUNCTION pmis_alias_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'alias_history is append-only'; END $$;
CREATE OR REPLACE TRIGGER alias_history_no_change BEFORE UPDATE OR DELETE ON alias_history
    FOR EACH ROW EXECUTE FUNCTION pmis_alias_history_append_only();
CREATE OR REPLACE TRIGGER alias_history_no_truncate BEFORE TRUNCATE ON alias_history
    FOR EACH STATEMENT EXECUTE FUNCTION pmis_alias_history_append_only();
"""
