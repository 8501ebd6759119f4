"""``nbdeploy`` command line: a thin adapter that parses arguments and calls ``nbdeploy.api``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from nbdeploy import _format
from nbdeploy._errors import NbdeployError
from nbdeploy.vocabulary import QUANTIZE_CHOICES, RUNTIME_CHOICES, ProgressEvent


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
    "url",
    "p50_ms",
    "p99_ms",
    "created_at",
)


def _latency_cells(view: dict[str, Any]) -> dict[str, Any]:
    """p50/p99 as ``nbdeploy._format.ms`` prints them, marked when measured in-process only
    (not over HTTP on the endpoint); None (printed ``-``) when nothing was measured."""
    cells = dict(view)
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
        LIST_COLUMNS,
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

    endpoint = api.deploy(
        args.path,
        name=args.name,
        quantize=args.quantize,
        runtime=args.runtime,
        port=args.port,
        auth=not args.no_auth,
        progress=_print_stage,
    )
    if args.json:
        _print_json({**endpoint.to_dict(), "token": endpoint.token})
        return 0
    print(f"{endpoint.name} v{endpoint.version} is serving at {endpoint.url}")
    print(f"  infer: POST {endpoint.url}/v2/models/{endpoint.name}/infer")
    if endpoint.token:
        print(f"  token: {endpoint.token}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    info = api.get(args.name).to_dict()
    if args.json:
        _print_json(info)
    else:
        print(_table([info], LIST_COLUMNS))
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

    endpoint = api.rollback(args.name, args.version)
    print(f"{endpoint.name} now serves version {endpoint.version} at {endpoint.url}")
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


def cmd_quickstart(args: argparse.Namespace) -> int:
    from nbdeploy.quickstart import run_quickstart

    run_quickstart(name=args.name, runtime=args.runtime, out=print)
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
    deploy.add_argument("--json", action="store_true", help="print the endpoint as JSON")
    deploy.set_defaults(handler=cmd_deploy)

    status = sub.add_parser("status", help="show one deployment")
    status.add_argument("name")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_status)

    logs = sub.add_parser("logs", help="print a deployment's server log")
    logs.add_argument("name")
    logs.add_argument("--tail", type=int, default=200, help="number of lines (default 200)")
    logs.set_defaults(handler=cmd_logs)

    stop = sub.add_parser("stop", help="stop a deployment")
    stop.add_argument("name")
    stop.set_defaults(handler=cmd_stop)

    rollback = sub.add_parser("rollback", help="serve an earlier version of a deployment")
    rollback.add_argument("name")
    rollback.add_argument(
        "--version", type=int, default=None, help="version (default: the previous)"
    )
    rollback.set_defaults(handler=cmd_rollback)

    demo = sub.add_parser("demo", help="open (or stop) the Voila demo page of a deployment")
    demo.add_argument("name")
    demo.add_argument(
        "--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)"
    )
    demo.add_argument("--stop", action="store_true", help="stop the demo server instead")
    demo.set_defaults(handler=cmd_demo)

    quick = sub.add_parser(
        "quickstart", help="train a digits CNN, export, quantize, benchmark and deploy it"
    )
    quick.add_argument(
        "--name", default="example-digits", help="model name (default: example-digits)"
    )
    quick.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto")
    quick.set_defaults(handler=cmd_quickstart)
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
