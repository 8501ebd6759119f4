"""REST routes under ``<base_url>/nbdeploy/api/``: HTTP in, one ``nbdeploy.api`` call, JSON out.

Core calls block (SQLite, the runtime, the model files), so each runs in a worker thread and
the Jupyter server stays responsive. Errors are ``{"error": "..."}`` with 400 for a bad
request, 404 for an unknown deployment or version, 409 when the deployment's state refuses
the action, 502 when its endpoint does not answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from http.client import responses
from typing import Any

import httpx
import tornado.web
from jupyter_server.base.handlers import APIHandler
from tornado.web import HTTPError

from nbdeploy import api
from nbdeploy._errors import DeployError, InputError, NbdeployError, RepositoryError
from nbdeploy.endpoint import Endpoint
from nbdeploy.jupyter.server import metrics, views
from nbdeploy.vocabulary import check_name

HTTP_CLIENT = "nbdeploy_http_client"
VOILA_ROOT = "nbdeploy_voila_root"
MAX_LOG_LINES = 100_000
ErrorStatus = tuple[tuple[type[NbdeployError], int], ...]


def http_error(status: int, message: str) -> HTTPError:
    """An HTTPError whose message is sent as is (tornado would %-format a bare message)."""
    return HTTPError(status, "%s", message)


def error_message(exc: BaseException | None, status: int) -> str:
    if isinstance(exc, HTTPError) and exc.log_message:
        return exc.log_message % exc.args if exc.args else exc.log_message
    if exc is not None and not isinstance(exc, HTTPError):
        return f"internal error: {type(exc).__name__}: {exc}"
    return responses.get(status, "error")


def check_deployment_name(name: str) -> str:
    try:
        return check_name(name)
    except InputError as exc:
        raise http_error(400, str(exc)) from exc


async def run_blocking(
    call: Callable[..., Any], *args: Any, errors: ErrorStatus = (), **kwargs: Any
) -> Any:
    """Run a core call in a worker thread; its NbdeployError becomes an HTTP error.

    ``errors`` maps error classes to statuses (first match wins); anything else is a 400.
    """
    try:
        return await asyncio.to_thread(call, *args, **kwargs)
    except NbdeployError as exc:
        status = next((code for kind, code in errors if isinstance(exc, kind)), 400)
        raise http_error(status, str(exc)) from exc


async def find_endpoint(name: str) -> Endpoint:
    """The active deployment ``name``: 400 for an invalid name, 404 for an unknown one."""
    check_deployment_name(name)
    return await run_blocking(api.get, name, errors=((DeployError, 404),))


class JsonErrorsMixin:
    """Every error, raised or unexpected, leaves as ``{"error": "..."}`` with its status."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        message = error_message(exc_info[1] if exc_info else None, status_code)
        self.set_header("Content-Type", "application/json")  # type: ignore[attr-defined]
        self.finish(json.dumps({"error": message}))  # type: ignore[attr-defined]


class NbdeployAPIHandler(JsonErrorsMixin, APIHandler):
    """Base of the JSON routes."""

    def reply(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data, default=str))

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object; an empty body is ``{}``."""
        raw = self.request.body.strip()
        if not raw:
            return {}
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise http_error(400, f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise http_error(400, f"expected a JSON object as body; got {type(body).__name__}")
        return body

    @property
    def http_client(self) -> httpx.AsyncClient:
        return self.settings[HTTP_CLIENT]

    @property
    def voila_root(self) -> str | None:
        """Jupyter's root dir when Voila's server extension can render demos under it."""
        return self.settings.get(VOILA_ROOT)


class DeploymentsHandler(NbdeployAPIHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        """Every active deployment with its live status and last benchmark latency."""
        rows = await run_blocking(views.list_deployments, voila_root=self.voila_root)
        self.reply({"deployments": rows})


class DeploymentHandler(NbdeployAPIHandler):
    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        """One deployment: its row, registered metadata, signature and versions."""
        endpoint = await find_endpoint(name)
        self.reply(
            await run_blocking(views.deployment_detail, endpoint, voila_root=self.voila_root)
        )


class StopHandler(NbdeployAPIHandler):
    @tornado.web.authenticated
    async def post(self, name: str) -> None:
        check_deployment_name(name)
        stopped = await run_blocking(api.undeploy, name, errors=((DeployError, 404),))
        self.reply({"name": name, "stopped_versions": stopped})


def positive_int(value: Any, what: str) -> int:
    """``value`` when it is a positive JSON integer (not a bool), else a 400."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise http_error(400, f"{what} must be a positive integer; got {value!r}")
    return value


def version_in_path(text: str) -> int:
    """The ``{version}`` of a route, which must be a positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise http_error(400, f"version must be a positive integer; got {text!r}")
    return int(text)


def traffic_weights(body: dict[str, Any]) -> dict[int, int]:
    """``{"weights": {"1": 90, "2": 10}}`` as ``{1: 90, 2: 10}``; the sum and the versions are
    the core's to check (its InputError is a 400 too)."""
    weights = body.get("weights")
    if not isinstance(weights, dict) or not weights:
        raise http_error(400, f'expected {{"weights": {{"1": 90, "2": 10}}}} as body; got {body!r}')
    parsed: dict[int, int] = {}
    for key, percent in weights.items():
        version = version_in_path(str(key))
        if isinstance(percent, bool) or not isinstance(percent, int):
            raise http_error(
                400, f"the weight of version {key} must be an integer percent; got {percent!r}"
            )
        parsed[version] = percent
    return parsed


class VersionActionHandler(NbdeployAPIHandler):
    """Base of the routes that change which versions serve and answer the deployment's row."""

    async def act(self, name: str, call: Callable[..., Any], *args: Any) -> None:
        """``call(name, *args)``; a version never registered is a 404, any other refusal of
        the core (no candidate, the stable version, a version that fails to load) a 409."""
        await find_endpoint(name)
        await self.check_versions(name, [arg for arg in args if isinstance(arg, int)])
        endpoint = await run_blocking(
            call, name, *args, errors=((RepositoryError, 404), (NbdeployError, 409))
        )
        self.reply(await run_blocking(views.deployment_row, endpoint, voila_root=self.voila_root))

    async def check_versions(self, name: str, versions: Iterable[int]) -> None:
        """404 for versions ``name`` never registered (the core calls them bad input)."""
        rows = await run_blocking(api.models, name)
        registered = sorted({int(row["version"]) for row in rows})
        unknown = [version for version in versions if version not in registered]
        if unknown:
            raise http_error(
                404,
                f"{name} has no version {', '.join(map(str, unknown))}; its registered versions"
                f" are {registered}",
            )

    def version_from_body(self) -> int | None:
        version = self.json_body().get("version")
        return None if version is None else positive_int(version, "version")


class RollbackHandler(VersionActionHandler):
    @tornado.web.authenticated
    async def post(self, name: str) -> None:
        """Drop the canary or shadow (the stable version takes all traffic), or serve an earlier
        version: body ``{"version": N}``, or the previous one by default."""
        await self.act(name, api.rollback, self.version_from_body())


class PromoteHandler(VersionActionHandler):
    @tornado.web.authenticated
    async def post(self, name: str) -> None:
        """Give a candidate all the traffic and make it stable: body ``{"version": N}``, or the
        newest canary or shadow by default."""
        await self.act(name, api.promote, self.version_from_body())


class TrafficHandler(VersionActionHandler):
    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        """The live split: ``{"name", "weights": {"1": 90, "2": 10}}``."""
        await find_endpoint(name)
        weights = await run_blocking(api.traffic, name, errors=((DeployError, 502),))
        self.reply({"name": name, "weights": {str(k): v for k, v in weights.items()}})

    @tornado.web.authenticated
    async def put(self, name: str) -> None:
        """Set the split: body ``{"weights": {"1": 50, "2": 50}}`` (percents summing to 100)."""
        weights = traffic_weights(self.json_body())
        await find_endpoint(name)
        await self.check_versions(name, weights)
        endpoint = await run_blocking(
            api.set_traffic,
            name,
            weights,
            errors=((InputError, 400), (RepositoryError, 404), (NbdeployError, 409)),
        )
        self.reply(await run_blocking(views.deployment_row, endpoint, voila_root=self.voila_root))


class VersionHandler(VersionActionHandler):
    @tornado.web.authenticated
    async def delete(self, name: str, version: str) -> None:
        """Stop one version that is not the stable one; its traffic goes to the stable."""
        await self.act(name, api.stop_version, version_in_path(version))


class CompareHandler(NbdeployAPIHandler):
    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        """The versions side by side on the traffic they served (``CompareReport.to_dict()``)."""
        await find_endpoint(name)
        report = await run_blocking(api.compare, name, errors=((DeployError, 502),))
        self.reply(report.to_dict())


class LogsHandler(NbdeployAPIHandler):
    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        """The last ``tail`` lines (default 200) the deployment's server wrote."""
        raw = self.get_argument("tail", "200")
        try:
            tail = int(raw)
        except ValueError:
            tail = 0
        if not 1 <= tail <= MAX_LOG_LINES:
            raise http_error(400, f"tail must be an integer from 1 to {MAX_LOG_LINES}; got {raw!r}")
        endpoint = await find_endpoint(name)
        logs = await run_blocking(endpoint.logs, tail, errors=((DeployError, 502),))
        self.reply({"name": name, "version": endpoint.version, "tail": tail, "logs": logs})


class MetricsHandler(NbdeployAPIHandler):
    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        """Request counts, infer latency and batch sizes read from the endpoint's /metrics."""
        endpoint = await find_endpoint(name)
        try:
            response = await self.http_client.get(
                f"{endpoint.url}/metrics", headers=endpoint.headers
            )
        except httpx.HTTPError as exc:
            raise http_error(
                502, f"the endpoint of {name} at {endpoint.url} does not answer: {exc}"
            ) from exc
        if response.status_code != 200:
            raise http_error(
                502, f"the endpoint of {name} answered /metrics with HTTP {response.status_code}"
            )
        summary = metrics.summarize(response.text)
        self.reply({"name": name, "version": endpoint.version, **summary})


class DemoHandler(NbdeployAPIHandler):
    @tornado.web.authenticated
    async def post(self, name: str) -> None:
        """Start (or reuse) the demo of ``name``; ``url`` opens it through this Jupyter server
        when Voila's extension can render it (relative to the base URL), else directly."""
        await find_endpoint(name)
        server = await run_blocking(api.demo, name, errors=((DeployError, 409),))
        url = await run_blocking(api.demo_url, name, jupyter_root=self.voila_root)
        self.reply({"name": name, "url": url or server.url, "direct_url": server.url})


class NotFoundHandler(NbdeployAPIHandler):
    """Any other path under the API prefix: a JSON 404 instead of Jupyter's HTML page."""

    @tornado.web.authenticated
    async def get(self, path: str) -> None:
        raise http_error(404, f"no such nbdeploy API route: {self.request.path}")

    post = put = delete = get
