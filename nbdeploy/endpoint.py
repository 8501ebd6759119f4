"""Endpoint: the handle a user holds on one running deployment."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from nbdeploy._errors import DeployError
from nbdeploy._tensors import as_feeds
from nbdeploy._types import Signature
from nbdeploy.client import InferenceError, V2Client
from nbdeploy.runtimes.base import RuntimeHandle


class Endpoint:
    """A V2 inference endpoint on 127.0.0.1, built from one row of the deployment store.

    ``predict`` re-resolves the deployment by name once when the connection fails, so a client
    that holds an Endpoint across a blue-green switch follows the new version instead of failing.
    """

    def __init__(self, record: dict[str, Any]) -> None:
        self._record = record
        self.name: str = record["name"]
        self.version: int = int(record["version"])
        self.runtime: str = record["runtime"]
        self.url: str = record["url"]
        self.token: str | None = record.get("token") or None
        self.deployment_id: int = int(record["id"])
        self.created_at: str = record.get("created_at", "")
        self.handle = RuntimeHandle.from_dict(record["handle"])

    @property
    def tuning(self) -> dict[str, Any]:
        """The server settings it was launched with (batching, CPUs, memory), kept on rollback."""
        return dict(self._record["handle"].get("tuning") or {})

    @property
    def headers(self) -> dict[str, str]:
        """Headers any HTTP client needs for the model routes (the bearer token, if any)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @cached_property
    def client(self) -> V2Client:
        return V2Client(self.url, token=self.token)

    @cached_property
    def signature(self) -> Signature:
        from nbdeploy.repository import ModelRepository

        return ModelRepository().get(self.name, self.version).signature

    def _runtime(self) -> Any:
        from nbdeploy.runtimes import get_runtime

        return get_runtime(self.runtime)

    @property
    def status(self) -> str:
        """``running``, ``starting``, ``restarting``, ``exited`` or ``missing``, asked live."""
        try:
            return self._runtime().status(self.handle)
        except DeployError:
            return "missing"

    def metadata(self) -> dict[str, Any]:
        """The V2 model metadata the server reports (name, versions, inputs, outputs)."""
        return self.client.metadata(self.name)

    def logs(self, tail: int = 200) -> str:
        return self._runtime().logs(self.handle, tail=tail)

    def predict(
        self, x: Any, *, outputs: list[str] | None = None, binary: bool = True
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Run the model on ``x`` (array, list, tuple of arrays or dict of named inputs).

        Returns one array for a single-output model, else a dict of arrays by output name.
        """
        feeds = as_feeds(self.signature, x)
        try:
            result = self.client.infer(self.name, feeds, outputs=outputs, binary=binary)
        except InferenceError:
            raise
        except DeployError:
            successor = self._successor()
            if successor is None:
                raise
            return successor.predict(x, outputs=outputs, binary=binary)
        return next(iter(result.values())) if len(result) == 1 else result

    def _successor(self) -> Endpoint | None:
        """The deployment that replaced this one, if a redeploy happened meanwhile."""
        from nbdeploy.store import Store

        rows = Store().deployments(name=self.name)
        if rows and int(rows[0]["id"]) != self.deployment_id:
            return Endpoint(rows[0])
        return None

    def stop(self) -> None:
        """Stop this deployment's server and retire it in the store."""
        from nbdeploy.deployment import stop_deployment

        stop_deployment(self._record)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "runtime": self.runtime,
            "url": self.url,
            "status": self.status,
            "created_at": self.created_at,
            "deployment_id": self.deployment_id,
        }

    def __repr__(self) -> str:
        return f"<Endpoint {self.name} v{self.version} {self.runtime} {self.url}>"

    def _repr_html_(self) -> str:
        return (
            f"<b>{self.name}</b> v{self.version} &middot; {self.runtime} &middot; "
            f"<code>{self.url}/v2/models/{self.name}/infer</code> &middot; {self.status}"
        )
