"""Every default, written once. The lowest module: it imports nothing of asynctasq.

Durations are seconds (suffix ``_S``) unless the name says otherwise; sizes are bytes. The
settings in :mod:`asynctasq.config`, the :class:`~asynctasq.core.worker.Worker` arguments and
the drivers' constructor arguments all take their defaults from here.
"""

from __future__ import annotations

# -- tasks and producers ----------------------------------------------------------------------
DEFAULT_DRIVER = "sqlite"
DEFAULT_SERIALIZER = "msgpack"
DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RETRY_AFTER_S = 1.0
"""Base of the exponential retry backoff (doubles per attempt, jittered)."""
DEFAULT_MAX_RETRY_DELAY_S = 3600.0
DEFAULT_RESULTS_TTL_S = 500.0
"""RQ's default result TTL."""
DEFAULT_DISPATCH_TIMEOUT_S = 30.0
"""How long ``dispatch_sync()`` waits for the broker."""

# -- leases and messages -----------------------------------------------------------------------
DEFAULT_LEASE_S = 30.0
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest encoded task message a driver accepts unless the broker's own limit is lower (SQS)
or ``max_message_bytes`` says otherwise. Large data belongs in a store, passed by reference."""

# -- worker -----------------------------------------------------------------------------------
DEFAULT_CONCURRENCY = 10
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
DEFAULT_HEARTBEAT_INTERVAL_S = 10.0
DEFAULT_DEQUEUE_STRATEGY = "round_robin"
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_MAINTENANCE_INTERVAL_S = 600.0  # RQ's default
DEFAULT_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DEFAULT_DATE_FORMAT = "%H:%M:%S"

# -- reconnects -------------------------------------------------------------------------------
DEFAULT_RECONNECT_TIMEOUT_S = 60.0
"""How long an operation retries a lost broker connection before it raises."""
RECONNECT_FIRST_DELAY_S = 0.05
RECONNECT_MAX_DELAY_S = 0.5
"""Backoff cap while reconnecting: work resumes within this long of the broker's return."""

# -- sqlite -----------------------------------------------------------------------------------
DEFAULT_SQLITE_PATH = "asynctasq.db"

# -- redis ------------------------------------------------------------------------------------
DEFAULT_REDIS_URL = "redis://localhost:6379"
DEFAULT_REDIS_PREFIX = "asynctasq"
DEFAULT_REDIS_MAX_CONNECTIONS = 50
DEFAULT_REDIS_SOCKET_TIMEOUT_S = 15.0
"""A Redis reply overdue this long drops the connection (a dead peer, a cut network)."""

# -- postgres ---------------------------------------------------------------------------------
DEFAULT_POSTGRES_DSN = "postgresql://postgres@localhost:5432/postgres"
DEFAULT_POSTGRES_SCHEMA = "public"
DEFAULT_POSTGRES_TABLE = "asynctasq_tasks"
DEFAULT_POSTGRES_MIN_POOL_SIZE = 1
DEFAULT_POSTGRES_MAX_POOL_SIZE = 10

# -- mysql ------------------------------------------------------------------------------------
DEFAULT_MYSQL_DSN = "mysql://root@localhost:3306/test"
DEFAULT_MYSQL_TABLE = "asynctasq_tasks"
DEFAULT_MYSQL_MAX_POOL_SIZE = 10
DEFAULT_MYSQL_POLL_INTERVAL_S = 0.002
"""First poll of a waiting MySQL dequeue after activity (MySQL has no NOTIFY)."""
DEFAULT_MYSQL_BUSY_POLL_INTERVAL_S = 0.05
"""The MySQL poll backs off to this within the first seconds without work."""
DEFAULT_MYSQL_IDLE_AFTER_S = 2.0
"""After this long without work a MySQL poll slows to its idle interval."""
DEFAULT_MYSQL_MAX_POLL_INTERVAL_S = 0.25
"""The MySQL poll interval (with jitter) once idle: a few queries a second."""
DEFAULT_MYSQL_CONNECT_TIMEOUT_S = 10.0

# -- sqs --------------------------------------------------------------------------------------
DEFAULT_SQS_REGION = "us-east-1"
DEFAULT_SQS_WAIT_TIME_S = 20
"""Long poll of an idle worker: 3 ReceiveMessage calls per queue per minute."""
DEFAULT_SQS_MAX_POOL_CONNECTIONS = 50
DEFAULT_SQS_MESSAGE_GROUP_ID = "default"
"""Message group of what the driver sends to a FIFO queue: one group, one strict order."""
SQS_MAX_WAIT_S = 20
SQS_MAX_BATCH = 10
SQS_MAX_DELAY_S = 900
"""Longest DelaySeconds; the driver chains longer delays."""
SQS_MAX_VISIBILITY_S = 43200
"""SQS's cap on a message's visibility, counted from its receive (12 hours)."""
SQS_MAX_MESSAGE_BYTES = 1024 * 1024
"""AWS's limit on one message, body and attributes (and on a batch)."""
SQS_ATTRIBUTES_RESERVE_BYTES = 10 * 1024
"""Room kept for our message attributes (id, offset, due time, a failed entry's error)."""
SQS_FAILED_RETENTION_S = 14 * 24 * 3600
"""Retention of the failed queues the driver creates (SQS's longest)."""
SQS_FAILED_SCAN_VISIBILITY_S = 30
"""How long listing the failed registry hides the messages it reads (it shows them again)."""

# -- rabbitmq ---------------------------------------------------------------------------------
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@localhost:5672/"
DEFAULT_RABBITMQ_PREFIX = "asynctasq"
DEFAULT_RABBITMQ_QUEUE_TYPE = "auto"
"""``auto``: quorum queues (RabbitMQ 3.10+, where they take message TTLs), else classic."""
DEFAULT_RABBITMQ_CONNECT_TIMEOUT_S = 10.0
DEFAULT_RABBITMQ_MAX_MESSAGE_BYTES = 16 * 1024 * 1024 - 64 * 1024
"""RabbitMQ 4.x refuses messages over 16 MiB (``max_message_size``); headers need room too."""
RABBITMQ_SETTLE_S = 0.2
"""How long a new consumer's first dequeue waits for the messages the broker said were ready."""
RABBITMQ_GIVE_BACK_TIMEOUT_S = 5.0
"""How long ``disconnect`` spends giving prefetched messages back (then the broker requeues them)."""
DEFAULT_RABBITMQ_PREFETCH_HOLD_S = 1.0
"""How long prefetched deliveries may wait in a driver that does not ask for them before they
go back to the queue (uncounted) and that consumer stops: other workers get them instead."""
RABBITMQ_FAILED_DELIVERY_LIMIT = 1_000_000_000
"""``x-delivery-limit`` of the failed queue: reading it (``failed list``, ``stats``) returns its
entries, which RabbitMQ 4.0-4.2 counts; 4.0's default of 20 would drop them."""

# -- retention --------------------------------------------------------------------------------
DEFAULT_FAILED_RETENTION_S = 7 * 24 * 3600.0
"""Failed-registry entries older than this are deleted by drivers that sweep (0: keep)."""
