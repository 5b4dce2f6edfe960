"""The MySQL/MariaDB driver's tables, as numbered migrations (see :mod:`asynctasq.drivers._sql`).

``{t}`` is the validated table name; every other table is named after it. Statements use
``IF NOT EXISTS`` because MySQL DDL commits by itself: a migration cut off half-way is applied
again from its start. Never edit a shipped migration; append a new one.

The tasks table: ``due`` is when a waiting row may be claimed (its run time) and, while the row
is leased (``token`` set), when the lease expires. So the one secondary index
``(queue, due, id)`` serves the claim exactly (a range scan up to now finds ready rows and
expired leases alike, in a fixed order that ends in the primary key), and every later change
to a claimed row goes by primary key. Times are ``DATETIME(6)`` in UTC, from the server's
clock (``UTC_TIMESTAMP(6)``), so workers on hosts with skewed clocks agree on leases.
"""

from __future__ import annotations

from asynctasq.drivers._sql import Migration, latest

MIGRATIONS: list[Migration] = [
    Migration(
        1,
        "tasks and failed tables",
        [
            """CREATE TABLE IF NOT EXISTS `{t}` (
                id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
                queue VARCHAR(80) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                due DATETIME(6) NOT NULL,
                token BIGINT UNSIGNED NULL,
                deliveries INT NOT NULL DEFAULT 0,
                created_at DATETIME(6) NOT NULL,
                body LONGBLOB NOT NULL,
                PRIMARY KEY (id),
                KEY claim (queue, due, id)
            ) ENGINE=InnoDB""",
            """CREATE TABLE IF NOT EXISTS `{t}_failed` (
                id BIGINT UNSIGNED NOT NULL,
                queue VARCHAR(80) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                error MEDIUMTEXT NOT NULL,
                failed_at DATETIME(6) NOT NULL,
                body LONGBLOB NOT NULL,
                PRIMARY KEY (id),
                KEY by_queue (queue, failed_at),
                KEY by_time (failed_at)
            ) ENGINE=InnoDB""",
        ],
    ),
    Migration(
        2,
        "results, worker registry and commands tables",
        [
            """CREATE TABLE IF NOT EXISTS `{t}_results` (
                task_id VARCHAR(191) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                expires_at DATETIME(6) NOT NULL,
                body LONGBLOB NOT NULL,
                PRIMARY KEY (task_id),
                KEY by_expiry (expires_at)
            ) ENGINE=InnoDB""",
            """CREATE TABLE IF NOT EXISTS `{t}_workers` (
                name VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
                expires_at DATETIME(6) NOT NULL,
                info MEDIUMTEXT NOT NULL,
                PRIMARY KEY (name)
            ) ENGINE=InnoDB""",
            """CREATE TABLE IF NOT EXISTS `{t}_commands` (
                id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
                worker VARCHAR(191) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
                command MEDIUMTEXT NOT NULL,
                PRIMARY KEY (id),
                KEY by_worker (worker, id)
            ) ENGINE=InnoDB""",
        ],
    ),
]

VERSION_TABLE = """CREATE TABLE IF NOT EXISTS `{t}_schema_version` (
    version INT NOT NULL,
    description VARCHAR(200) NOT NULL,
    applied_at DATETIME(6) NOT NULL,
    PRIMARY KEY (version)
) ENGINE=InnoDB"""

TABLE_SUFFIXES = ("", "_failed", "_results", "_workers", "_commands", "_schema_version")
"""Every table the driver creates is ``<table><suffix>``."""

SCHEMA_VERSION = latest(MIGRATIONS)
MIGRATE_HINT = (
    "run `python -m asynctasq migrate --driver mysql` (with the same --mysql-dsn and --mysql-table)"
)

__all__ = ["MIGRATE_HINT", "MIGRATIONS", "SCHEMA_VERSION", "TABLE_SUFFIXES", "VERSION_TABLE"]
