"""Web framework integrations.

- :mod:`asynctasq.integrations.flask` and :mod:`asynctasq.integrations.quart`: the
  ``AsyncTasQ(app)`` extension (settings from ``app.config``, per-queue connections, every task
  inside an app context, a ``worker`` CLI command), both built on
  :mod:`asynctasq.integrations.base`.
- :mod:`asynctasq.integrations.fastapi`: a lifespan that connects and closes the producer.

This package never imports a framework itself; :func:`load_app_worker` finds the extension on
an app that has one (``python -m asynctasq worker --app myapp:create_app``).
"""

from asynctasq.integrations.base import (
    EXTENSION_KEY,
    AppSettings,
    load_app,
    load_app_worker,
    settings_from_app_config,
)

__all__ = ["EXTENSION_KEY", "AppSettings", "load_app", "load_app_worker", "settings_from_app_config"]
