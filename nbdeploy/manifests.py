"""Kubernetes and KServe manifests for a pushed image (``nbd.kubernetes``, ``nbdeploy k8s``).

Both kinds run the image ``nbdeploy.shipping.push`` recorded, pinned by its registry digest,
with one container spec shared by both:

- the server's tuning flags (batching, threads, limits) from the name's ``ServerSettings`` as
  container ``args`` (the image's entrypoint is kept), ``NBDEPLOY_HOST=0.0.0.0`` and
  ``NBDEPLOY_PORT`` in the environment, and ``NBDEPLOY_TOKEN`` from a Secret (never a value);
- the local container's hardening: user 10001, non-root, read-only root filesystem, no
  privilege escalation, every capability dropped, RuntimeDefault seccomp, and a memory-backed
  ``emptyDir`` at ``/tmp`` in place of the local tmpfs;
- readiness and liveness probes on ``/v2/health/ready`` and ``/v2/health/live``;
- the memory limit of the local container as both request and limit, and a CPU request sized
  from the endpoint's stored benchmark (see :func:`cpu_request`).

``kind="deployment"`` writes a Deployment, a Service, an ``autoscaling/v2``
HorizontalPodAutoscaler on CPU and a PodDisruptionBudget, with Prometheus scrape annotations
on the pods; ``kind="kserve"`` writes one ``serving.kserve.io/v1beta1`` InferenceService with
that container as a custom predictor in Standard (raw Deployment + HPA) mode, and a
``canaryTrafficPercent`` when the name serves a canary.

YAML is written with PyYAML when it is installed, else by a small writer of the same subset
(maps, lists, strings, numbers, booleans).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nbdeploy._errors import DeployError, InputError
from nbdeploy.runtimes.image import USER_ID
from nbdeploy.shipping import PushResult, latest_push, pod_server_args
from nbdeploy.vocabulary import DEPLOYMENT_STATES, ServerSettings, check_name

ManifestKind = Literal["deployment", "kserve"]
KINDS: tuple[str, ...] = ("deployment", "kserve")
PORT = 8080
TOKEN_KEY = "token"
TMP_SIZE = "64Mi"  # the local container's tmpfs at /tmp
KSERVE_CONTAINER = "kserve-container"  # the name KServe expects for a custom predictor
DEFAULT_CPU_MILLI = 1000  # one core: one inference thread, when nothing better is known
MIN_CPU_MILLI = 100


@dataclass
class Manifests:
    """The objects for one name, as plain dicts; ``yaml()`` renders them, ``write()`` saves."""

    name: str
    kind: ManifestKind
    image: str
    objects: list[dict[str, Any]]
    secret: str
    namespace: str | None = None
    notes: list[str] = field(default_factory=list)
    path: Path | None = None

    def yaml(self) -> str:
        return "---\n".join(to_yaml(obj) for obj in self.objects)

    @property
    def filename(self) -> str:
        return f"{slug(self.name)}-{self.kind}.yaml"

    def write(self, directory: str | Path = ".") -> Path:
        target = Path(directory).expanduser()
        target.mkdir(parents=True, exist_ok=True)
        self.path = target / self.filename
        self.path.write_text(self.yaml())
        return self.path

    def container(self) -> dict[str, Any]:
        """The model container's spec (what a pod runs)."""
        for obj in self.objects:
            if obj["kind"] == "Deployment":
                return obj["spec"]["template"]["spec"]["containers"][0]
            if obj["kind"] == "InferenceService":
                return obj["spec"]["predictor"]["containers"][0]
        raise DeployError("no pod spec among the objects")

    def kubectl(self) -> list[str]:
        """The commands that create the token's Secret and apply the manifests."""
        ns = f" -n {self.namespace}" if self.namespace else ""
        path = self.path or Path(self.filename)
        return [
            f"kubectl{ns} create secret generic {self.secret}"
            f' --from-literal={TOKEN_KEY}="$(openssl rand -hex 32)"',
            f"kubectl{ns} apply -f {path}",
        ]

    def __str__(self) -> str:
        return self.yaml()


def slug(name: str) -> str:
    """A DNS-1123 label from a model name (Kubernetes object names)."""
    value = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "model"
    return value[:50].rstrip("-")


def k8s_memory(value: str | None) -> str | None:
    """Docker's ``512m`` / ``1g`` (powers of 1024) as Kubernetes' ``512Mi`` / ``1Gi``."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*", str(value).lower())
    if not match:
        raise InputError(f"memory must look like 512m or 1g; got {value!r}")
    number, unit = match.groups()
    suffix = {"": "", "b": "", "k": "Ki", "m": "Mi", "g": "Gi", "t": "Ti"}[unit]
    return f"{number}{suffix}"


def cpu_request(settings: ServerSettings, report: dict[str, Any] | None) -> tuple[int, str]:
    """The CPU request in millicores and the reason, from the endpoint's HTTP benchmark.

    Rule: a request holds about one core for as long as it takes alone (``p50`` at batch 1,
    concurrency 1, HTTP and JSON included), so a pod at the best throughput the benchmark saw
    keeps ``throughput x p50`` cores busy (Little's law). That is the request, rounded up to
    100m, at least 100m, and at most the CPUs the local server had (``cpus``, else
    ``threads``) when set: the HPA then adds pods when they run above its target share of it.
    Without a benchmark: the local ``cpus`` (or ``threads``), else one core.
    """
    ceiling = settings.cpus or (float(settings.threads) if settings.threads else None)
    rows = [r for r in (report or {}).get("results", []) if r.get("status", "ok") == "ok"]
    alone = [
        r["p50_ms"]
        for r in rows
        if r.get("p50_ms") and r.get("batch_size", 1) == 1 and r.get("concurrency", 1) == 1
    ]
    peak = max((r["throughput"] for r in rows if r.get("throughput")), default=None)
    if alone and peak:
        busy = peak * min(alone) / 1000.0
        milli = max(MIN_CPU_MILLI, math.ceil(busy * 10) * 100)
        if ceiling:
            milli = min(milli, int(ceiling * 1000))
        return milli, (
            f"benchmark: {peak:.0f} req/s x {min(alone):.2f} ms alone = {busy:.2f} cores busy"
        )
    if ceiling:
        return int(ceiling * 1000), "no endpoint benchmark: the local server's CPUs"
    return DEFAULT_CPU_MILLI, "no endpoint benchmark and no CPU setting: one core"


def _benchmark_of(name: str, version: int) -> dict[str, Any] | None:
    from nbdeploy.store import Store

    store = Store()
    launches = [
        d for d in store.deployments(name=name, states=DEPLOYMENT_STATES) if d.version == version
    ]
    latest = max((d.id for d in launches), default=-1)
    found = store.endpoint_benchmark(latest, name=name, version=version)
    return found["report"] if found else None


def _canary(name: str) -> tuple[int, int, int] | None:
    """``(stable, canary, percent)`` when the name's routing sends a share to a canary."""
    from nbdeploy.routing import Routing
    from nbdeploy.store import Store

    route = Store().route(name)
    if not route:
        return None
    routing = Routing.from_json(route["routing"])
    shares = [(v, w) for v, w in routing.weights.items() if v != routing.stable and w > 0]
    if not shares:
        return None
    version, percent = max(shares)
    return routing.stable, version, percent


def container_spec(
    push: PushResult, *, name: str, secret: str, cpu_milli: int, memory: str | None
) -> dict[str, Any]:
    settings = ServerSettings.from_dict(push.settings)
    resources: dict[str, Any] = {"requests": {"cpu": f"{cpu_milli}m"}}
    if memory:
        resources["requests"]["memory"] = memory
        resources["limits"] = {"memory": memory}
    if settings.cpus:
        resources.setdefault("limits", {})["cpu"] = f"{int(settings.cpus * 1000)}m"
    return {
        "name": name,
        "image": push.pinned,
        "imagePullPolicy": "IfNotPresent",
        "args": pod_server_args(settings),
        "env": [
            {"name": "NBDEPLOY_HOST", "value": "0.0.0.0"},
            {"name": "NBDEPLOY_PORT", "value": str(PORT)},
            {
                "name": "NBDEPLOY_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": secret, "key": TOKEN_KEY}},
            },
        ],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": PORT},
            "initialDelaySeconds": 1,
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": PORT},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": resources,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": USER_ID,
            "runAsGroup": USER_ID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": USER_ID,
        "runAsGroup": USER_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


TMP_VOLUME = {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": TMP_SIZE}}


def _scrape_annotations() -> dict[str, str]:
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(PORT),
        "prometheus.io/path": "/metrics",
    }


def kubernetes(
    name: str,
    kind: ManifestKind = "deployment",
    *,
    version: int | None = None,
    namespace: str | None = None,
    min_replicas: int = 1,
    max_replicas: int = 4,
    cpu_target: int = 70,
    output_dir: str | Path | None = None,
) -> Manifests:
    """Manifests running the image ``push`` recorded for ``name`` (of ``version``; by default
    the name's canary under KServe when it has one, else its stable version, else the newest
    push); written to ``output_dir`` when given."""
    check_name(name)
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if not (1 <= min_replicas <= max_replicas):
        raise InputError(
            f"replicas need 1 <= min_replicas <= max_replicas; got {min_replicas}, {max_replicas}"
        )
    if not (1 <= cpu_target <= 100):
        raise InputError(f"cpu_target is a percent of the CPU request; got {cpu_target}")
    notes: list[str] = []
    canary = _canary(name) if version is None else None
    percent: int | None = None
    if canary is not None and kind == "kserve":
        stable, version, percent = canary
        notes.append(
            f"canary: v{version} gets {percent}% and the last ready revision (v{stable} when"
            f" it was applied first) the rest"
        )
    elif canary is not None:
        version = canary[0]
        notes.append(
            f"v{canary[1]} is a {canary[2]}% canary locally; this Deployment runs the stable"
            f" v{version} (kind='kserve' writes the canary split)"
        )
    push = latest_push(name, version)
    if push is None and version is not None and canary is None:
        raise DeployError(f"{name} v{version} was never pushed: nbd.push({name!r}, registry=...)")
    if push is None and canary is not None:
        raise DeployError(
            f"{name} v{version} (serving locally) was never pushed:"
            f" nbd.push({name!r}, registry=..., version={version})"
        )
    if push is None:
        push = latest_push(name)
    if push is None:
        raise DeployError(f"{name} was never pushed: nbd.push({name!r}, registry=...) first")
    settings = ServerSettings.from_dict(push.settings)
    cpu_milli, reason = cpu_request(settings, _benchmark_of(name, push.version))
    notes.append(f"CPU request {cpu_milli}m ({reason})")
    base = f"nbdeploy-{slug(name)}"
    secret = f"{base}-token"
    memory = k8s_memory(settings.memory)
    labels = {
        "app.kubernetes.io/name": slug(name),
        "app.kubernetes.io/instance": base,
        "app.kubernetes.io/managed-by": "nbdeploy",
        "app.kubernetes.io/version": f"v{push.version}",
        "nbdeploy.io/model-sha256": push.sha256[:12],
    }
    selector = {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
    annotations = {"nbdeploy.io/image-tag": push.reference}

    def meta(object_name: str, **extra: Any) -> dict[str, Any]:
        data: dict[str, Any] = {"name": object_name}
        if namespace:
            data["namespace"] = namespace
        data["labels"] = dict(labels)
        data.update(extra)
        return data

    if kind == "kserve":
        container = container_spec(
            push, name=KSERVE_CONTAINER, secret=secret, cpu_milli=cpu_milli, memory=memory
        )
        predictor: dict[str, Any] = {
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "scaleMetric": "cpu",
            "scaleTarget": cpu_target,
        }
        if percent is not None:
            predictor["canaryTrafficPercent"] = percent
        predictor.update(
            {
                "automountServiceAccountToken": False,
                "securityContext": _pod_security(),
                "containers": [container],
                "volumes": [dict(TMP_VOLUME)],
            }
        )
        objects = [
            {
                "apiVersion": "serving.kserve.io/v1beta1",
                "kind": "InferenceService",
                "metadata": meta(
                    slug(name),
                    annotations={
                        **annotations,
                        "serving.kserve.io/deploymentMode": "Standard",
                        "serving.kserve.io/autoscalerClass": "hpa",
                        "serving.kserve.io/enable-prometheus-scraping": "true",
                        "nbdeploy.io/protocol": "v2",
                        **_scrape_annotations(),
                    },
                ),
                "spec": {"predictor": predictor},
            }
        ]
    else:
        container = container_spec(
            push, name="model", secret=secret, cpu_milli=cpu_milli, memory=memory
        )
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(base, annotations=dict(annotations)),
            "spec": {
                "replicas": min_replicas,
                "selector": {"matchLabels": selector},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
                },
                "template": {
                    "metadata": {"labels": dict(labels), "annotations": _scrape_annotations()},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "securityContext": _pod_security(),
                        "terminationGracePeriodSeconds": 30,
                        "containers": [container],
                        "volumes": [dict(TMP_VOLUME)],
                    },
                },
            },
        }
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(base),
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
            },
        }
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": meta(base),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": base},
                "minReplicas": min_replicas,
                "maxReplicas": max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": cpu_target},
                        },
                    }
                ],
            },
        }
        pdb = {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": meta(base),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
        }
        objects = [deployment, service, hpa, pdb]
    manifests = Manifests(
        name=name,
        kind=kind,
        image=push.pinned,
        objects=objects,
        secret=secret,
        namespace=namespace,
        notes=notes,
    )
    if output_dir is not None:
        manifests.write(output_dir)
    return manifests


# YAML -------------------------------------------------------------------------------------


def to_yaml(data: Any) -> str:
    """Block-style YAML for maps, lists and scalars: PyYAML's when installed, else ours."""
    try:
        import yaml
    except ImportError:
        return "\n".join(_lines(data, 0)) + "\n"
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(str(value))  # a JSON string is a valid YAML double-quoted scalar


def _lines(data: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(data, dict):
        if not data:
            return [pad + "{}"]
        out = []
        for key, value in data.items():
            head = f"{pad}{_scalar(key) if not _plain_key(key) else key}:"
            if isinstance(value, dict | list) and value:
                out.append(head)
                out.extend(_lines(value, indent + (2 if isinstance(value, dict) else 0)))
            else:
                out.append(f"{head} {_inline(value)}")
        return out
    if isinstance(data, list):
        if not data:
            return [pad + "[]"]
        out = []
        for item in data:
            if isinstance(item, dict | list) and item:
                inner = _lines(item, indent + 2)
                out.append(f"{pad}- {inner[0].lstrip()}")
                out.extend(inner[1:])
            else:
                out.append(f"{pad}- {_inline(item)}")
        return out
    return [pad + _scalar(data)]


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def _plain_key(key: Any) -> bool:
    return isinstance(key, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]*", key) is not None
