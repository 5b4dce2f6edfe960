"""Every error asynctasq raises derives from :class:`AsyncTasQError`.

::

    AsyncTasQError
    ├── ConfigError               a setting is unknown, misspelt or has a bad value
    ├── DriverError               a broker operation failed; the message says what to do
    │   ├── DriverNotAvailable    the driver's optional dependency is not installed
    │   ├── BrokerUnavailable     the broker cannot be reached (after reconnecting for a while)
    │   ├── BrokerError           the broker refused the operation (credentials, permissions...)
    │   └── SchemaError           the broker's tables are missing or at another version
    ├── MessageTooLarge           an encoded task message is over the driver's size limit
    ├── UnsupportedOperation      the driver lacks an optional capability (stats, results...)
    ├── InvalidQueueName          a queue name with characters outside [A-Za-z0-9_.:-]
    ├── SerializationError        a payload cannot be encoded or decoded
    ├── UnknownTaskError          a message names a task that is not registered
    ├── TaskDefinitionError       a task is defined or dispatched in a way that cannot work
    ├── ResultError               waiting for a result failed
    │   ├── ResultTimeout         no result arrived in time
    │   └── TaskFailed            the task ended in the failed registry
    ├── TaskTimeout               a task ran past its timeout (recorded, not raised to users)
    ├── ProcessLost               the pool process running a process=True task died
    ├── ProcessPoolError          the process pool cannot take a task (not started, closing)
    └── RemoteTaskError           a process task raised what cannot cross back as itself

Control flow that tasks raise on purpose is not an error: :class:`Retry` asks the worker to
run the task again later, and counts as an attempt.
"""

from __future__ import annotations


class AsyncTasQError(Exception):
    """Root of every asynctasq error."""


class ConfigError(AsyncTasQError, ValueError):
    pass


class DriverError(AsyncTasQError):
    pass


class DriverNotAvailable(DriverError, ImportError):
    pass


class BrokerUnavailable(DriverError, ConnectionError):
    pass


class BrokerError(DriverError):
    pass


class SchemaError(DriverError):
    pass


class MessageTooLarge(AsyncTasQError, ValueError):
    def __init__(self, size: int, limit: int, driver: str) -> None:
        super().__init__(
            f"task message of {size:,} bytes is over the {driver} driver's limit of {limit:,} bytes "
            "(max_message_bytes): pass large data by reference (a file path or an object-store key), "
            "or raise --max-message-bytes / ASYNCTASQ_MAX_MESSAGE_BYTES if the broker allows it"
        )
        self.size = size
        self.limit = limit
        self.driver = driver

    def __reduce__(self) -> tuple[type[MessageTooLarge], tuple[int, int, str]]:
        return (type(self), (self.size, self.limit, self.driver))


class UnsupportedOperation(AsyncTasQError):
    pass


class InvalidQueueName(AsyncTasQError, ValueError):
    pass


class SerializationError(AsyncTasQError, ValueError):
    pass


class UnknownTaskError(AsyncTasQError, LookupError):
    pass


class TaskDefinitionError(AsyncTasQError, TypeError):
    pass


class ResultError(AsyncTasQError):
    pass


class ResultTimeout(ResultError, TimeoutError):
    pass


class TaskFailed(ResultError):
    def __init__(self, task_id: str, error: str) -> None:
        super().__init__(f"task {task_id} failed: {error}")
        self.task_id = task_id
        self.error = error

    def __reduce__(self) -> tuple[type[TaskFailed], tuple[str, str]]:
        return (type(self), (self.task_id, self.error))


class TaskTimeout(AsyncTasQError, TimeoutError):
    pass


class ProcessLost(AsyncTasQError):
    pass


class ProcessPoolError(AsyncTasQError, RuntimeError):
    """The pool cannot take the task: not started, closing, or its children fail to start."""


class RemoteTaskError(AsyncTasQError):
    """A process task raised something the worker cannot re-raise as itself: an exception that
    does not pickle, or a ``BaseException`` such as ``SystemExit``."""

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[type[RemoteTaskError], tuple[str, str, str]]:
        return (type(self), (self.type_name, self.message, self.remote_traceback))


class Retry(Exception):
    """Raise inside a task to run it again after ``delay`` seconds (counts as an attempt)."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(
            reason or (f"retry requested in {delay}s" if delay is not None else "retry requested")
        )
        self.delay = delay
        self.reason = reason

    def __reduce__(self) -> tuple[type[Retry], tuple[float | None, str]]:
        return (type(self), (self.delay, self.reason))
