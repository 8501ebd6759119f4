"""``nbdeploy`` command line: a thin adapter that parses arguments and calls ``nbdeploy.api``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from nbdeploy import _format
from nbdeploy._errors import InputError, NbdeployError
from nbdeploy.vocabulary import (
    QUANTIZE_CHOICES,
    RUNTIME_CHOICES,
    DeploymentView,
    ProgressEvent,
    VersionView,
)

WEIGHT_PAIR = re.compile(r"(\d+)[=:](\d+)%?")


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as '1,8'; got {text!r}"
        ) from None
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers; got {text!r}")
    return sizes


def _weight_pair(text: str) -> tuple[int, int]:
    """``1=90`` (or ``1:90``, as ``nbdeploy ls`` prints it) as ``(1, 90)``; the sum and the
    versions are the core's to check."""
    match = WEIGHT_PAIR.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected VERSION=PERCENT pairs such as 1=90 2=10; got {text!r}"
        )
    return int(match.group(1)), int(match.group(2))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [["-" if row.get(col) is None else str(row[col]) for col in columns] for row in rows]
    return _format.text_table([col.upper() for col in columns], cells)


def _show(rows: list[dict[str, Any]], columns: Sequence[str], *, as_json: bool, empty: str) -> None:
    """Rows as JSON, as an aligned table, or a hint when there are none."""
    if as_json:
        _print_json(rows)
    elif not rows:
        print(empty)
    else:
        print(_table(rows, columns))


def cmd_bench(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    artifact = api.export(args.path, None, name=args.name)
    report = api.benchmark(artifact, batch_sizes=args.batch_sizes, time_budget_s=args.budget)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.table())
    return 0


LIST_COLUMNS = (
    "name",
    "version",
    "runtime",
    "format",
    "status",
    "traffic",
    "url",
    "p50_ms",
    "p99_ms",
    "created_at",
)
VERSION_COLUMNS = (
    "version",
    "weight",
    "role",
    "requests",
    "errors",
    "p50_ms",
    "p99_ms",
    "agreement",
)


def _split(versions: Sequence[dict[str, Any]]) -> str:
    """``1:90 2:10``: each version's percent of the traffic (a shadow says so instead)."""
    return " ".join(
        f"{v['version']}:{'shadow' if v['role'] == 'shadow' else v['weight']}" for v in versions
    )


def _list_columns(views: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The listing's columns, with ``guard`` only when a guard took some canary's traffic back
    and ``drift`` only when some deployment's live data drifted from its reference."""
    extra = tuple(key for key in ("guard", "drift") if any(v.get(key) for v in views))
    return (*LIST_COLUMNS, *extra)


def _latency_cells(view: dict[str, Any]) -> dict[str, Any]:
    """p50/p99 as ``nbdeploy._format.ms`` prints them, marked when measured in-process only
    (not over HTTP on the endpoint); None (printed ``-``) when nothing was measured."""
    cells = dict(view)
    cells["traffic"] = _split(view.get("versions") or []) or None
    if view.get("network"):
        cells["runtime"] = f"{view['runtime']} ({view['network']} network)"
    for key in ("p50_ms", "p99_ms"):
        text = _format.ms(view.get(key))
        if text and view.get("latency_source") == "in-process":
            text += " (in-process)"
        cells[key] = text or None
    return cells


def _print_stage(event: ProgressEvent) -> None:
    """Stages go to stderr; raw tool output (pip, docker build) stays out of the terminal."""
    if not event.detail:
        print(event, file=sys.stderr)


def cmd_ls(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    views = [view.to_dict() for view in api.deployment_views()]
    _show(
        views if args.json else [_latency_cells(view) for view in views],
        _list_columns(views),
        as_json=args.json,
        empty="No deployments. Start one with: nbdeploy deploy MODEL.onnx --name NAME",
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    _show(
        api.models(),
        ("name", "version", "variant", "framework", "size_bytes", "created_at"),
        as_json=args.json,
        empty="No registered models yet.",
    )
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    guards = {
        key: getattr(args, key)
        for key in ("max_error_rate", "min_agreement", "max_p99_ms", "min_requests")
        if getattr(args, key) is not None
    }
    endpoint = api.deploy(
        args.path,
        name=args.name,
        quantize=args.quantize,
        runtime=args.runtime,
        port=args.port,
        auth=not args.no_auth,
        canary=args.canary,
        shadow=args.shadow,
        guards=guards or None,
        progress=_print_stage,
    )
    view = endpoint.view()
    if args.json:
        _print_json(view.to_dict())
        return 0
    deployed = max((v.version for v in view.versions), default=view.version)
    print(f"{endpoint.name} v{deployed} is serving at {endpoint.url}")
    print(f"  infer: POST {endpoint.url}/v2/models/{endpoint.name}/infer")
    serving = [v for v in view.versions if v.role != "idle"]
    if len(serving) > 1:
        print(f"  traffic: {_traffic_line(serving)}")
    if endpoint.token:
        print(f"  token: nbdeploy token {endpoint.name}  (or $NBDEPLOY_TOKEN in scripts)")
    return 0


def _traffic_line(versions: Sequence[VersionView]) -> str:
    """``v1 90% · v2 10% (canary)``, as the notebook summary writes it."""
    return " · ".join(
        f"v{v.version} {v.weight}%" + (f" ({v.role})" if v.role in ("canary", "shadow") else "")
        for v in versions
    )


def _version_cells(version: dict[str, Any]) -> dict[str, Any]:
    cells = dict(version)
    cells["weight"] = f"{version['weight']}%"
    for key in ("p50_ms", "p99_ms"):
        cells[key] = _format.ms(version.get(key)) or None
    if version.get("agreement") is not None:
        cells["agreement"] = f"{version['agreement']:.1%}"
    return cells


def _show_versions(view: DeploymentView, action: str, *, as_json: bool) -> None:
    """A name's versions after ``action`` (or as they are): JSON, or a headline and a table."""
    data = view.to_dict()
    if as_json:
        _print_json(data)
        return
    print(f"{action}{view.name}: stable v{view.version} at {view.url}")
    if view.guard:
        print(f"guard: {view.guard}")
    if view.versions:
        print(_table([_version_cells(v) for v in data["versions"]], VERSION_COLUMNS))


def cmd_status(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    info = api.get(args.name).to_dict()
    if args.json:
        _print_json(info)
    else:
        print(_table([_latency_cells(info)], _list_columns([info])))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Print a deployment's bearer token, only when asked: nothing else prints it."""
    import nbdeploy.api as api

    token = api.get(args.name).token
    if token is None:
        print(f"{args.name} was deployed without a token (--no-auth)", file=sys.stderr)
        return 1
    print(token)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    print(api.get(args.name).logs(tail=args.tail), end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    versions = api.undeploy(args.name)
    print(f"stopped {args.name} (version {', '.join(map(str, versions))})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    endpoint = api.rollback(args.name, args.version, progress=_print_stage)
    _show_versions(endpoint.view(), "rolled back: ", as_json=args.json)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    endpoint = api.promote(args.name, args.version, progress=_print_stage)
    _show_versions(endpoint.view(), "promoted: ", as_json=args.json)
    return 0


def cmd_traffic(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    if not args.weights:
        _show_versions(api.get(args.name).view(), "", as_json=args.json)
        return 0
    weights = dict(args.weights)
    if len(weights) < len(args.weights):
        raise InputError("traffic: each version may be given once")
    endpoint = api.set_traffic(args.name, weights, progress=_print_stage)
    _show_versions(endpoint.view(), "traffic set: ", as_json=args.json)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    report = api.compare(args.name)
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.table())
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    removed = api.remove(args.name, args.version, force=args.force)
    if removed:
        print(f"removed {args.name} version {', '.join(map(str, removed))}")
    else:
        print(f"nothing to remove for {args.name}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    report = api.prune(keep=args.keep, dry_run=args.dry_run)
    if args.json:
        _print_json({**report.to_dict(), "dry_run": args.dry_run})
        return 0
    print(report.table())
    if args.dry_run:
        print("dry run: nothing was removed (run without --dry-run to remove these)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    if args.stop:
        stopped = api.stop_demo(args.name)
        print(
            f"stopped the demo of {args.name}" if stopped else f"no demo of {args.name} was running"
        )
        return 0
    server = api.demo(args.name, port=args.port)
    print(f"demo of {args.name}: {server.url}")
    print(f"  stop it with: nbdeploy demo {args.name} --stop")
    return 0


def cmd_monitoring(args: argparse.Namespace) -> int:
    """``nbdeploy monitoring up|down|status|grafana``: the Prometheus nbdeploy runs, and Grafana."""
    import nbdeploy.api as api

    if args.action == "grafana":
        print(api.monitoring_grafana())
        return 0
    if args.action == "down":
        stopped = api.monitoring_down()
        print("stopped Prometheus" if stopped else "Prometheus was not running")
        return 0
    status = (
        api.monitoring_up(port=args.port) if args.action == "up" else api.monitoring_status()
    ).to_dict()
    if args.json:
        _print_json(status)
        return 0
    if not status["running"]:
        print("Prometheus is not running (start it with: nbdeploy monitoring up)")
    else:
        how = "started" if status["started"] else "running"
        print(f"Prometheus {how} at {status['url']} (pid {status['pid']})")
    health = status["health"]
    targets = [f"{name} ({health.get(name, 'pending')})" for name in status["targets"]]
    print(f"  targets: {', '.join(targets) if targets else 'none (no deployment is running)'}")
    print(f"  config: {status['files']['config']}")
    if status["running"]:
        print("  Grafana dashboard: nbdeploy monitoring grafana")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from nbdeploy.quickstart import run_quickstart

    run_quickstart(name=args.name, runtime=args.runtime, out=print)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    result = api.push(
        args.name, registry=args.registry, version=args.version, progress=_print_stage
    )
    if args.json:
        _print_json(result.to_dict())
        return 0
    print(f"{result.name} v{result.version} pushed: {result.reference}")
    print(f"  digest: {result.pinned}")
    print(f"  manifests: nbdeploy k8s {result.name} [--kserve] -o DIR")
    return 0


def cmd_k8s(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    manifests = api.kubernetes(
        args.name,
        kind="kserve" if args.kserve else "deployment",
        version=args.version,
        namespace=args.namespace,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        output_dir=args.output,
    )
    for note in manifests.notes:
        print(f"# {note}", file=sys.stderr)
    if args.output is None:
        print(manifests.yaml(), end="")
        return 0
    print(f"wrote {manifests.path}")
    for line in manifests.kubectl():
        print(f"  {line}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbdeploy",
        description="Export, quantize, benchmark and serve models as V2 inference endpoints.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    bench = sub.add_parser("bench", help="benchmark an ONNX model in-process")
    bench.add_argument("path", help="path to a .onnx file or an artifact directory")
    bench.add_argument("--name", default=None, help="display name (default: file stem)")
    bench.add_argument("--batch-sizes", type=_batch_sizes, default=(1, 8), metavar="1,8")
    bench.add_argument("--budget", type=float, default=2.0, help="seconds per measurement")
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.set_defaults(handler=cmd_bench)

    ls = sub.add_parser("ls", help="list running deployments")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=cmd_ls)

    models = sub.add_parser("models", help="list registered model versions")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(handler=cmd_models)

    deploy = sub.add_parser("deploy", help="serve an ONNX model (or artifact dir) as a V2 endpoint")
    deploy.add_argument("path", help="path to a .onnx file or an artifact directory")
    deploy.add_argument("--name", required=True, help="deployment name (lower-case, e.g. digits)")
    deploy.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default="none",
        help="variant to serve",
    )
    deploy.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto")
    deploy.add_argument(
        "--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)"
    )
    deploy.add_argument("--no-auth", action="store_true", help="serve without a bearer token")
    beside = deploy.add_mutually_exclusive_group()
    beside.add_argument(
        "--canary",
        type=int,
        metavar="P",
        help="serve the new version beside the current one with P%% of the traffic (1-99)",
    )
    beside.add_argument(
        "--shadow",
        action="store_true",
        help="load the new version beside the current one and mirror every request to it",
    )
    guards = deploy.add_argument_group(
        "guards", "limits that send a canary's traffic back to the stable version by themselves"
    )
    guards.add_argument("--max-error-rate", type=float, metavar="R", help="errors per request, 0-1")
    guards.add_argument(
        "--min-agreement", type=float, metavar="A", help="rows answered like the stable, 0-1"
    )
    guards.add_argument("--max-p99-ms", type=float, metavar="M", help="p99 latency in ms")
    guards.add_argument(
        "--min-requests", type=int, metavar="N", help="requests before judging (default 20)"
    )
    deploy.add_argument("--json", action="store_true", help="print the deployment as JSON")
    deploy.set_defaults(handler=cmd_deploy)

    status = sub.add_parser("status", help="show one deployment")
    status.add_argument("name")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_status)

    token = sub.add_parser(
        "token",
        help="print a deployment's bearer token (e.g. export NBDEPLOY_TOKEN=$(nbdeploy token N))",
    )
    token.add_argument("name")
    token.set_defaults(handler=cmd_token)
    logs = sub.add_parser("logs", help="print a deployment's server log")
    logs.add_argument("name")
    logs.add_argument("--tail", type=int, default=200, help="number of lines (default 200)")
    logs.set_defaults(handler=cmd_logs)

    stop = sub.add_parser("stop", help="stop a deployment")
    stop.add_argument("name")
    stop.set_defaults(handler=cmd_stop)

    rollback = sub.add_parser(
        "rollback",
        help="drop a canary or shadow (all traffic to the stable version), else serve an"
        " earlier version",
    )
    rollback.add_argument("name")
    rollback.add_argument(
        "--version", type=int, default=None, help="version (default: the previous)"
    )
    rollback.add_argument("--json", action="store_true", help="print the deployment as JSON")
    rollback.set_defaults(handler=cmd_rollback)

    promote = sub.add_parser(
        "promote", help="give a canary or shadow version all the traffic and make it stable"
    )
    promote.add_argument("name")
    promote.add_argument(
        "--version", type=int, default=None, help="version (default: the newest candidate)"
    )
    promote.add_argument("--json", action="store_true", help="print the deployment as JSON")
    promote.set_defaults(handler=cmd_promote)

    traffic = sub.add_parser("traffic", help="show or set how traffic splits between versions")
    traffic.add_argument("name")
    traffic.add_argument(
        "weights",
        nargs="*",
        type=_weight_pair,
        metavar="VERSION=PERCENT",
        help="the new split, e.g. 1=50 2=50 (percents summing to 100); none: show it",
    )
    traffic.add_argument("--json", action="store_true", help="print the deployment as JSON")
    traffic.set_defaults(handler=cmd_traffic)

    compare = sub.add_parser(
        "compare", help="compare a deployment's versions on the traffic they served"
    )
    compare.add_argument("name")
    compare.add_argument("--json", action="store_true", help="print the report as JSON")
    compare.set_defaults(handler=cmd_compare)

    rm = sub.add_parser("rm", help="delete a model's registered versions (all, or one)")
    rm.add_argument("name")
    rm.add_argument("--version", type=int, default=None, help="only this version")
    rm.add_argument(
        "--force", action="store_true", help="remove them even while a deployment serves them"
    )
    rm.set_defaults(handler=cmd_rm)

    prune = sub.add_parser(
        "prune", help="delete old model versions (and what they left behind) that nothing serves"
    )
    prune.add_argument(
        "--keep", type=int, default=2, help="newest versions to keep per name (default 2)"
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="list what would be removed, remove nothing"
    )
    prune.add_argument("--json", action="store_true", help="print the report as JSON")
    prune.set_defaults(handler=cmd_prune)

    demo = sub.add_parser("demo", help="open (or stop) the Voila demo page of a deployment")
    demo.add_argument("name")
    demo.add_argument(
        "--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)"
    )
    demo.add_argument("--stop", action="store_true", help="stop the demo server instead")
    demo.set_defaults(handler=cmd_demo)

    monitoring = sub.add_parser(
        "monitoring",
        help="run a Prometheus that scrapes every deployment; write a Grafana dashboard",
    )
    monitoring.add_argument(
        "action",
        choices=("up", "down", "status", "grafana"),
        help="up: start (or report) Prometheus on 127.0.0.1; down: stop it; status: what it"
        " scrapes; grafana: print how to point a Grafana at the dashboard",
    )
    monitoring.add_argument(
        "--port", type=int, default=None, help="up: port on 127.0.0.1 (default: 9090 or a free one)"
    )
    monitoring.add_argument("--json", action="store_true", help="up/status: print JSON")
    monitoring.set_defaults(handler=cmd_monitoring)

    quick = sub.add_parser(
        "quickstart", help="train a digits CNN, export, quantize, benchmark and deploy it"
    )
    quick.add_argument(
        "--name", default="example-digits", help="model name (default: example-digits)"
    )
    quick.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto")
    quick.set_defaults(handler=cmd_quickstart)

    push = sub.add_parser(
        "push", help="push an image baking one version in to a registry (for a cluster)"
    )
    push.add_argument("name")
    push.add_argument(
        "--registry", required=True, help="HOST:PORT/PREFIX, e.g. 127.0.0.1:5000/team"
    )
    push.add_argument("--version", type=int, default=None, help="default: the newest")
    push.add_argument("--json", action="store_true")
    push.set_defaults(handler=cmd_push)

    k8s = sub.add_parser("k8s", help="write Kubernetes (or KServe) manifests for the pushed image")
    k8s.add_argument("name")
    k8s.add_argument("--kserve", action="store_true", help="an InferenceService instead")
    k8s.add_argument("-o", "--output", default=None, metavar="DIR", help="default: stdout")
    k8s.add_argument("--version", type=int, default=None)
    k8s.add_argument("-n", "--namespace", default=None)
    k8s.add_argument("--min-replicas", type=int, default=1)
    k8s.add_argument("--max-replicas", type=int, default=4)
    k8s.set_defaults(handler=cmd_k8s)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except NbdeployError as exc:
        print(f"nbdeploy {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
