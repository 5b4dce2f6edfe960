"""Logging set-up of the command line's processes: ``--log-format``, ``--date-format``,
``--json-logs``, a config file's ``DICT_CONFIG``, and the per-task line's cheap path."""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asynctasq.config import Config

TASK_LOGGER = "asynctasq.tasks"
"""The logger of the one INFO line per task (``--disable-task-description-logging`` ends it)."""

# the attributes every LogRecord has; the others came in as ``extra=`` (task fields)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ISO 8601, UTC), level, logger, message, the ``extra=``
    fields (a task line carries task, task_id, queue, outcome, duration_s) and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that flushes at most every ``interval`` seconds, and at once for
    warnings and worse: a busy worker's per-task lines cost a write, not a flush, each."""

    def __init__(self, stream: Any = None, interval: float = 0.2) -> None:
        super().__init__(stream)
        self.interval = interval
        self._flushed = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            now = time.monotonic()
            if record.levelno >= logging.WARNING or now - self._flushed >= self.interval:
                self._flushed = now
                self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging never breaks the program
            self.handleError(record)


class CachedTimeFormatter(logging.Formatter):
    """A ``logging.Formatter`` that formats the time once per second, not once per line."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._second = -1
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is None or "%f" in datefmt:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, time.strftime(datefmt, self.converter(record.created))
        return self._text


# LogRecord attributes that cost a frame walk, a thread or a process lookup per record
_COSTLY = ("pathname", "filename", "module", "lineno", "funcName", "thread", "process", "stack_info")


def _skip_costly_fields(fmt: str | None) -> None:
    """What logging's own docs suggest for speed, when the format shows none of those fields:
    no caller lookup, no thread, process or multiprocessing names (about a third of a line's
    cost, measured on the Redis drain benchmark)."""
    if fmt is not None and any(f"%({name}" in fmt for name in _COSTLY):
        return
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


TaskLine = tuple[float, str, str, str, str, float]
"""(time, queue, task name, task id, outcome, seconds): one task's line, before formatting."""

# the fields a task line can fill without a LogRecord
_LINE_FIELDS = {"asctime", "created", "msecs", "levelname", "levelno", "name", "message"}


class TaskLineSink:
    """Writes the per-task INFO lines in batches, formatted as the handler's other lines (the
    same format, or the same JSON), in one write per batch instead of a LogRecord and a
    handler call each: logging costs about 25 us a line, which would halve a worker's rate.
    The worker hands it a batch at each ack flush, so lines appear a few ms after the task."""

    def __init__(self, handler: logging.StreamHandler, fmt: str, datefmt: str, json_lines: bool) -> None:  # type: ignore[type-arg]
        self.handler = handler
        self.fmt = fmt
        self.datefmt = datefmt
        self.json_lines = json_lines
        self._second = -1
        self._asctime = ""

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._asctime = second, time.strftime(self.datefmt, time.localtime(created))
        return self._asctime

    def write(self, lines: list[TaskLine]) -> None:
        out = []
        for created, queue, task, task_id, outcome, took in lines:
            message = f"{queue}: {task} ({task_id}) {outcome} in {took:.3f}s"
            if self.json_lines:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
                out.append(
                    json.dumps(
                        {
                            "time": f"{stamp}.{int(created * 1000) % 1000:03d}Z",
                            "level": "INFO",
                            "logger": TASK_LOGGER,
                            "message": message,
                            "task": task,
                            "task_id": task_id,
                            "queue": queue,
                            "outcome": outcome,
                            "duration_s": round(took, 6),
                        }
                    )
                )
            else:
                out.append(
                    self.fmt
                    % {
                        "asctime": self._time(created),
                        "created": created,
                        "msecs": int(created * 1000) % 1000,
                        "levelname": "INFO",
                        "levelno": logging.INFO,
                        "name": TASK_LOGGER,
                        "message": message,
                    }
                )
        self.handler.acquire()
        try:
            self.handler.stream.write("\n".join(out) + "\n")
            self.handler.flush()
        except Exception:  # noqa: BLE001 - logging never breaks the worker
            pass
        finally:
            self.handler.release()


_sink: TaskLineSink | None = None


def task_line_sink() -> TaskLineSink | None:
    """The batch writer of per-task lines, when :func:`setup_logging` configured logging the
    plain way (not DICT_CONFIG, a format of the usual fields); None: log each line."""
    return _sink


def _fields(fmt: str) -> set[str]:
    import re

    return set(re.findall(r"%\((\w+)\)", fmt))


def setup_logging(config: Config) -> None:
    """Configure the root logger from ``config`` (once per process; a later call replaces it)."""
    global _sink
    _sink = None
    if config.dict_config is not None:
        logging.config.dictConfig(config.dict_config)
        return
    handler = BufferedStreamHandler(sys.stderr)
    if config.json_logs:
        handler.setFormatter(JsonFormatter())
        _skip_costly_fields(None)
    else:
        handler.setFormatter(CachedTimeFormatter(config.log_format, config.date_format))
        _skip_costly_fields(config.log_format)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, config.log_level.upper(), logging.INFO))
    if config.json_logs or _fields(config.log_format) <= _LINE_FIELDS:
        _sink = TaskLineSink(handler, config.log_format, config.date_format, config.json_logs)


__all__ = [
    "TASK_LOGGER", "BufferedStreamHandler", "JsonFormatter", "TaskLine", "TaskLineSink", "setup_logging",
    "task_line_sink",
]  # fmt: skip
