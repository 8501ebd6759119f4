"""``nbdeploy`` command line: a thin adapter that parses arguments and calls ``nbdeploy.api``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from nbdeploy._errors import NbdeployError


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
    cells = [
        [str(row.get(col, "") if row.get(col) is not None else "-") for col in columns]
        for row in rows
    ]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    import nbdeploy.api as api
    from nbdeploy._tensors import random_sample

    artifact = api.export(args.path, None, name=args.name)
    sample = random_sample(artifact.signature, batch_size=max(args.batch_sizes), seed=0)
    report = api.benchmark(
        artifact, sample, batch_sizes=args.batch_sizes, time_budget_s=args.budget
    )
    if args.json:
        _print_json(report.to_dict())
    else:
        print(report.table())
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    rows = api.deployment_rows()
    if args.json:
        _print_json(rows)
    elif not rows:
        print("No deployments. Start one with: nbdeploy deploy MODEL.onnx --name NAME")
    else:
        print(_table(rows, ("name", "version", "runtime", "status", "url", "created_at")))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import nbdeploy.api as api

    rows = api.models()
    if args.json:
        _print_json(rows)
    elif not rows:
        print("No registered models yet.")
    else:
        print(_table(rows, ("name", "version", "variant", "framework", "size_bytes", "created_at")))
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from nbdeploy.quickstart import run_quickstart

    run_quickstart(name=args.name, out=print)
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

    quick = sub.add_parser(
        "quickstart", help="train a small digits model, export, quantize, benchmark and register it"
    )
    quick.add_argument("--name", default="digits", help="model name (default: digits)")
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
