"""The PostgreSQL driver's schema, as versioned migrations (see :mod:`asynctasq.drivers._sql`).

In the statements, ``{s}`` is the quoted schema, ``{t}`` the quoted table name and ``{x}`` the
raw table name for derived names; both are validated identifiers. Never edit a shipped
migration; append a new one.
"""

from __future__ import annotations

from asynctasq.drivers._sql import Migration, latest

MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "tasks and failed tables",
        [
            """
            CREATE TABLE {s}.{t} (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                queue text NOT NULL,
                visible_at timestamptz NOT NULL,
                lease_token bigint,
                delivery_count integer NOT NULL DEFAULT 0,
                body bytea NOT NULL
            ) WITH (
                fillfactor = 80,
                autovacuum_vacuum_scale_factor = 0.01,
                autovacuum_vacuum_threshold = 1000,
                autovacuum_vacuum_insert_scale_factor = 0.05,
                autovacuum_analyze_scale_factor = 0.02,
                autovacuum_vacuum_cost_delay = 0
            )
            """,
            'CREATE INDEX "{x}_claim" ON {s}.{t} (queue, visible_at, id)',
            """
            CREATE TABLE {s}."{x}_failed" (
                id bigint PRIMARY KEY,
                queue text NOT NULL,
                body bytea NOT NULL,
                error text NOT NULL,
                failed_at timestamptz NOT NULL DEFAULT now()
            )
            """,
            'CREATE INDEX "{x}_failed_queue" ON {s}."{x}_failed" (queue, failed_at)',
            'CREATE INDEX "{x}_failed_at" ON {s}."{x}_failed" (failed_at)',
        ],
    ),
    Migration(
        2,
        "results, worker registry and commands tables",
        [
            """
            CREATE TABLE {s}."{x}_results" (
                task_id text PRIMARY KEY,
                payload bytea NOT NULL,
                expires_at timestamptz NOT NULL
            ) WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.02)
            """,
            'CREATE INDEX "{x}_results_expiry" ON {s}."{x}_results" (expires_at)',
            """
            CREATE TABLE {s}."{x}_workers" (
                name text PRIMARY KEY,
                info jsonb NOT NULL,
                expires_at timestamptz NOT NULL
            ) WITH (fillfactor = 50)
            """,
            """
            CREATE TABLE {s}."{x}_commands" (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                worker text NOT NULL,
                command jsonb NOT NULL
            )
            """,
            'CREATE INDEX "{x}_commands_worker" ON {s}."{x}_commands" (worker, id)',
        ],
    ),
]
SCHEMA_VERSION = latest(MIGRATIONS)
MIGRATE_HINT = "run `python -m asynctasq migrate --driver postgres`"

__all__ = ["MIGRATE_HINT", "MIGRATIONS", "SCHEMA_VERSION"]
