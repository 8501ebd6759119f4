"""The nbdeploy Jupyter server extension: a REST API for the lab sidebar and an endpoint proxy.

Enabled by ``pip install`` through ``jupyter-config/jupyter_server_config.d/nbdeploy.json``;
``jupyter server extension list`` shows it as ``nbdeploy.jupyter.server``.
"""

from __future__ import annotations

from typing import Any

import httpx
from jupyter_server.utils import url_path_join

API_PREFIX = "nbdeploy/api"
NAME = r"(?P<name>[^/]+)"
VERSION = r"(?P<version>[^/]+)"
VOILA_EXTENSION = "voila.server_extension"
UPSTREAM_TIMEOUT = httpx.Timeout(300.0, connect=10.0, pool=30.0)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "nbdeploy.jupyter.server"}]


def routes(base_url: str) -> list[tuple[str, type]]:
    """Every route of the extension, under Jupyter's ``base_url``."""
    from nbdeploy.jupyter.server import handlers, monitor_handlers
    from nbdeploy.jupyter.server.proxy import ProxyHandler
    from nbdeploy.vocabulary import PROXY_PREFIX

    def api(path: str) -> str:
        return url_path_join(base_url, API_PREFIX, path)

    return [
        (api("deployments"), handlers.DeploymentsHandler),
        (api(f"deployments/{NAME}"), handlers.DeploymentHandler),
        (api(f"deployments/{NAME}/stop"), handlers.StopHandler),
        (api(f"deployments/{NAME}/rollback"), handlers.RollbackHandler),
        (api(f"deployments/{NAME}/promote"), handlers.PromoteHandler),
        (api(f"deployments/{NAME}/traffic"), handlers.TrafficHandler),
        (api(f"deployments/{NAME}/compare"), handlers.CompareHandler),
        (api(f"deployments/{NAME}/versions/{VERSION}"), handlers.VersionHandler),
        (api(f"deployments/{NAME}/logs"), handlers.LogsHandler),
        (api(f"deployments/{NAME}/metrics"), handlers.MetricsHandler),
        (api(f"deployments/{NAME}/demo"), handlers.DemoHandler),
        (api(f"deployments/{NAME}/stats"), monitor_handlers.StatsHandler),
        (api(f"deployments/{NAME}/drift"), monitor_handlers.DriftHandler),
        (api("(?P<path>.*)"), handlers.NotFoundHandler),
        (url_path_join(base_url, PROXY_PREFIX, NAME) + r"(?P<path>/.*)?", ProxyHandler),
    ]


def _record_server(server_app: Any, base_url: str, *, voila_loaded: bool) -> None:
    """Tell this server's kernels where it is (NBDEPLOY_HOME/jupyter/<pid>.json, owner-only,
    removed at exit), so the links they show go through it."""
    import atexit

    from nbdeploy import api
    from nbdeploy._errors import NbdeployError

    try:
        api.record_jupyter_server(
            base_url=base_url, root_dir=str(server_app.root_dir), voila=voila_loaded
        )
    except (NbdeployError, OSError) as exc:
        server_app.log.warning("nbdeploy: cannot record this server for its kernels: %s", exc)
        return
    atexit.register(api.forget_jupyter_server)


def _load_jupyter_server_extension(server_app: Any) -> None:
    """Add the routes and the HTTP client the metrics route and the proxy share."""
    from nbdeploy.jupyter.server.handlers import HTTP_CLIENT, VOILA_ROOT
    from nbdeploy.jupyter.server.proxy import upstream_client

    web_app = server_app.web_app
    web_app.settings.setdefault(HTTP_CLIENT, upstream_client(UPSTREAM_TIMEOUT))
    voila = server_app.extension_manager.extensions.get(VOILA_EXTENSION)
    web_app.settings[VOILA_ROOT] = server_app.root_dir if voila and voila.enabled else None
    base_url = web_app.settings["base_url"]
    web_app.add_handlers(".*$", routes(base_url))
    _record_server(server_app, base_url, voila_loaded=bool(voila and voila.enabled))
    server_app.log.info(
        "nbdeploy: REST API at %s, endpoint proxy at %s",
        url_path_join(base_url, API_PREFIX),
        url_path_join(base_url, "nbdeploy/proxy/<name>/"),
    )
