"""The Airflow plugin (entry point ``airflow.plugins``): the fleet page in the Admin menu,
the API's docs in the Docs menu, and the FastAPI app behind both on the api-server.

Airflow loads plugins in every process (scheduler, task runners on workers too), so this
module imports nothing heavy: the FastAPI app is built only when the api-server asks for
``fastapi_apps``, and the [edge_mailbox] settings only at the first request.
"""

from __future__ import annotations

from functools import cache, cached_property
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/edge-mailbox"


@cache
def _app() -> Any:
    from edge_mailbox.executor.plugins.api import create_fleet_app

    return create_fleet_app()


def _base_path(path: str) -> str:
    """``path`` under the path of [api] base_url, as the UI's links must be."""
    from urllib.parse import urlparse

    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="/") or "/"
    if base.startswith(("http://", "https://")):
        base = urlparse(base).path
    return base.rstrip("/") + path


class EdgeMailboxPlugin(AirflowPlugin):
    name = "edge_mailbox"

    @cached_property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [{"app": _app(), "url_prefix": URL_PREFIX, "name": "edge-mailbox fleet"}]

    @cached_property
    def external_views(self) -> list[dict[str, Any]]:  # type: ignore[override]
        icon = _base_path(f"{URL_PREFIX}/ui/icon.svg")
        icon_dark = _base_path(f"{URL_PREFIX}/ui/icon-dark.svg")
        return [
            {
                "name": "Edge Mailbox Fleet",
                "href": _base_path(f"{URL_PREFIX}/ui/"),
                "destination": "nav",
                "category": "admin",
                "url_route": "edge-mailbox",
                "icon": icon,
                "icon_dark_mode": icon_dark,
            },
            {
                "name": "Edge Mailbox API",
                "href": _base_path(f"{URL_PREFIX}/docs"),
                "destination": "nav",
                "category": "docs",
                "url_route": "edge-mailbox-api",
                "icon": icon,
                "icon_dark_mode": icon_dark,
            },
        ]
