"""Error reporting to Sentry (``--sentry-dsn``, ``SENTRY_DSN`` in a config file; the ``sentry``
extra): each task's final failure is one event, tagged with the task's name, id, queue and
attempt; a failure that is retried is a breadcrumb, not an event. Log records do not become
events (the worker's own error line would report each failure twice)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asynctasq.errors import ConfigError

if TYPE_CHECKING:
    from asynctasq.message import Envelope


class SentryReporter:
    def __init__(self, dsn: str) -> None:
        try:
            import sentry_sdk
            from sentry_sdk.integrations.logging import LoggingIntegration
        except ImportError:
            raise ConfigError(
                "sentry_dsn is set but sentry-sdk is not installed: pip install 'asynctasq[sentry]'"
            ) from None
        self._sdk: Any = sentry_sdk
        if not sentry_sdk.get_client().is_active():  # else the application set Sentry up itself
            sentry_sdk.init(dsn=dsn, integrations=[LoggingIntegration(level=None, event_level=None)])

    def failed(self, env: Envelope, exc: BaseException, attempt: int) -> None:
        """The task's last attempt failed: one event."""
        with self._sdk.new_scope() as scope:
            scope.set_tag("asynctasq.task", env.task)
            scope.set_tag("asynctasq.queue", env.queue)
            scope.set_tag("asynctasq.task_id", env.id)
            scope.set_tag("asynctasq.attempt", attempt)
            scope.set_context(
                "asynctasq",
                {"task": env.task, "id": env.id, "queue": env.queue, "attempt": attempt,
                 "max_attempts": env.max_attempts},
            )  # fmt: skip
            self._sdk.capture_exception(exc)

    def retried(self, env: Envelope, exc: BaseException, attempt: int, delay: float) -> None:
        self._sdk.add_breadcrumb(
            category="asynctasq.retry",
            level="warning",
            message=f"{env.task} {env.id} attempt {attempt}/{env.max_attempts} failed "
            f"({type(exc).__name__}: {exc}); retrying in {delay:.2f}s",
        )

    def flush(self, timeout: float = 2.0) -> None:
        self._sdk.flush(timeout=timeout)


__all__ = ["SentryReporter"]
