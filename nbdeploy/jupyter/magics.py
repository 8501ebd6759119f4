"""``%deploy``, ``%deployments``, ``%undeploy``, the version magics (``%promote``,
``%rollback``, ``%traffic``, ``%compare``) and ``%monitor``: one line from a notebook to an
endpoint, and to watching it run.

Thin by design: arguments are resolved in the user's namespace and handed to ``nbdeploy.api``;
what comes back is rendered. Defaults are traitlets, so ``%config DeployMagic.runtime =
"process"`` changes them for the session (or ``c.DeployMagic.runtime`` in a config file).
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Bool, Enum, Float

from nbdeploy import api
from nbdeploy._errors import NbdeployError
from nbdeploy.jupyter import (
    ExpressionError,
    default_name,
    evaluate,
    launch_demo_url,
    model_kind,
    parse_weights,
)
from nbdeploy.jupyter.render import DeploymentTable, DeploySummary, VersionsView, progress_html
from nbdeploy.vocabulary import (
    QUANTIZE_CHOICES,
    RUNTIME_CHOICES,
    ProgressEvent,
    Stage,
)

if TYPE_CHECKING:
    from nbdeploy.artifact import ModelArtifact
    from nbdeploy.bench import BenchmarkReport
    from nbdeploy.endpoint import Endpoint

EAGER_FRAMEWORKS = ("torch", "keras", "sklearn")


class DeployMagicError(UsageError):
    """A failure shown as one readable line instead of a traceback.

    IPython renders an exception through ``_render_traceback_`` when it has one; in a notebook
    that becomes a regular (red) error output, in a terminal a single line.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[1;31mnbdeploy:\x1b[0m {self}"]


class ProgressReporter:
    """The ``progress=`` callback of ``nbd.deploy``: one live display in a notebook, lines in a terminal."""

    def __init__(self, rich: bool) -> None:
        self.rich = rich
        self.steps: list[ProgressEvent] = []
        self._handle: Any = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.detail:
            return
        self.steps.append(event)
        if not self.rich:
            print(f"  {event}", flush=True)
            return
        from IPython.display import HTML, display

        view = HTML(progress_html(self.steps))
        if self._handle is None:
            self._handle = display(view, display_id=True)
        else:
            self._handle.update(view)

    def step(self, stage: Stage, message: str) -> None:
        """A step the magic itself takes after the deploy (benchmark, demo)."""
        self(ProgressEvent(stage, message))

    def fail(self, message: str) -> None:
        """Replace the live view with a ✗ line and the error, so no step looks still running."""
        stage = self.steps[-1].stage if self.steps else "deploy"
        if not self.rich:
            print(f"  ✗ {stage} failed", flush=True)
            return
        if self._handle is not None:
            from IPython.display import HTML

            self._handle.update(HTML(progress_html(self.steps, failed=message)))

    def done(self) -> None:
        """Mark the live view finished (a ✓ on the last step) when something else is shown."""
        if self._handle is not None:
            from IPython.display import HTML

            self._handle.update(HTML(progress_html(self.steps, done=True)))

    def finish(self, result: Any) -> None:
        """Replace the live progress view with ``result`` (or show it below the printed lines)."""
        from IPython.display import display

        if self._handle is not None:
            self._handle.update(result)
        else:
            display(result)


def _unquote(token: str) -> str:
    """IPython keeps quotes in magic arguments; a quoted expression means the text inside."""
    if len(token) >= 2 and token[0] == token[-1] and token[0] in "'\"":
        return token[1:-1]
    return token


@magics_class
class DeployMagic(Magics):
    """Deploy models from the notebook namespace; defaults settable with ``%config``."""

    runtime = Enum(
        RUNTIME_CHOICES,
        default_value="auto",
        help="Runtime when --runtime is not given: docker, process, or auto (docker if it answers).",
    ).tag(config=True)
    default_quantize = Enum(
        QUANTIZE_CHOICES, default_value="none", help="Quantization when --quantize is not given."
    ).tag(config=True)
    auth = Bool(True, help="Protect new endpoints with a bearer token.").tag(config=True)
    bench = Bool(False, help="Benchmark every deployment (as if --bench were given).").tag(
        config=True
    )
    demo = Bool(False, help="Open a demo page for every deployment (as --demo).").tag(config=True)
    bench_seconds = Float(
        1.0, help="Seconds each --bench measurement runs (in-process: half of it per target)."
    ).tag(config=True)
    short_errors = Bool(
        True,
        help="Show nbdeploy errors as one line; False re-raises them with the full traceback.",
    ).tag(config=True)

    @property
    def namespace(self) -> Mapping[str, Any]:
        return self.shell.user_ns

    @property
    def rich(self) -> bool:
        """True inside a Jupyter kernel, where HTML is rendered; False in terminal IPython."""
        return getattr(self.shell, "kernel", None) is not None

    @contextmanager
    def readable_errors(self) -> Iterator[None]:
        """Turn nbdeploy and usage errors into one line (unless ``short_errors`` is off)."""
        try:
            yield
        except DeployMagicError:
            raise
        except (NbdeployError, UsageError) as exc:
            if not self.short_errors:
                raise
            raise DeployMagicError(str(exc).strip() or type(exc).__name__) from exc

    @magic_arguments()
    @argument(
        "model",
        help="the variable (or expression) holding the model: a torch Module, Keras model,"
        " scikit-learn estimator, ModelArtifact, or the path of an .onnx file",
    )
    @argument(
        "-s",
        "--sample",
        metavar="EXPR",
        help="a few real input rows to export and check with, e.g. x_test[:8]"
        " (quote expressions with spaces)",
    )
    @argument("-n", "--name", help="deployment name (default: the model variable's name)")
    @argument(
        "-q",
        "--quantize",
        choices=QUANTIZE_CHOICES,
        help="quantize before serving; auto benchmarks int8 and fp16 and serves the fastest"
        " accurate one (default: %%config DeployMagic.default_quantize)",
    )
    @argument(
        "-r",
        "--runtime",
        choices=RUNTIME_CHOICES,
        help="where the endpoint runs (default: %%config DeployMagic.runtime)",
    )
    @argument(
        "--bench",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="benchmark in-process and over HTTP after deploying (default: DeployMagic.bench)",
    )
    @argument(
        "--demo",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="open the endpoint's demo page (default: DeployMagic.demo)",
    )
    @argument("--labels", metavar="EXPR", help="class names for the outputs, e.g. class_names")
    @argument(
        "--tokenizer",
        metavar="EXPR",
        help="a fast Hugging Face tokenizer: the endpoint then takes raw text, e.g. tok",
    )
    @argument(
        "--python",
        action="store_true",
        help="when ONNX export fails, serve the model object itself as a Python model",
    )
    @argument(
        "--requirements",
        metavar="EXPR",
        help="a Python model's packages, e.g. \"['scikit-learn']\" (default: detected, pinned)",
    )
    @argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    @argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="require a bearer token on inference routes (default: DeployMagic.auth)",
    )
    @argument(
        "--canary",
        type=int,
        metavar="P",
        help="serve the new version beside the current one, with P%% of the traffic (1-99)",
    )
    @argument(
        "--shadow",
        action="store_true",
        help="load the new version beside the current one and mirror every request to it",
    )
    @argument(
        "--max-error-rate",
        type=float,
        metavar="R",
        help="guard: send the canary's traffic back when its error rate exceeds R (0-1)",
    )
    @argument(
        "--min-agreement",
        type=float,
        metavar="A",
        help="guard: send the canary's traffic back when it agrees with the stable version on"
        " less than A of the rows (0-1)",
    )
    @argument(
        "--max-p99-ms",
        type=float,
        metavar="M",
        help="guard: send the canary's traffic back when its p99 latency exceeds M ms",
    )
    @argument(
        "--min-requests",
        type=int,
        metavar="N",
        help="guard: judge the canary only once it has N requests in the window (default 20)",
    )
    @line_magic
    def deploy(self, line: str) -> Endpoint:
        """Export, check, (quantize,) serve MODEL as a local Open Inference Protocol endpoint.

        Returns the Endpoint, so ``ep = %deploy model --sample x[:8]`` keeps a handle.
        """
        with self.readable_errors():
            args = self._parse(self.deploy, line)
            if args.canary is not None and args.shadow:
                raise UsageError("--canary and --shadow exclude each other: pick one")
            guards = _guards(args)
            model_text = _unquote(args.model) if _is_quoted_expression(args.model) else args.model
            try:
                model = evaluate(model_text, self.namespace, what="MODEL")
            except ExpressionError as exc:
                if _is_file(model_text):
                    raise ExpressionError(f'{exc}; did you mean %deploy "{model_text}"?') from exc
                raise
            sample = self._expression(args.sample, "--sample")
            labels = self._expression(args.labels, "--labels")
            tokenizer = self._expression(args.tokenizer, "--tokenizer")
            requirements = self._expression(args.requirements, "--requirements")
            quantize = args.quantize or self.default_quantize
            progress = ProgressReporter(self.rich)
            try:
                endpoint = api.deploy(
                    model,
                    sample,
                    name=_unquote(args.name) if args.name else default_name(args.model, model),
                    quantize=None if quantize == "none" else quantize,
                    runtime=args.runtime or self.runtime,
                    labels=labels,
                    tokenizer=tokenizer,
                    fallback="python" if args.python else None,
                    requirements=requirements,
                    port=args.port,
                    auth=self.auth if args.auth is None else args.auth,
                    canary=args.canary,
                    shadow=args.shadow,
                    guards=guards,
                    progress=progress,
                )
            except BaseException as exc:  # Ctrl-C too: the card must not keep its hourglass
                progress.fail(" ".join(str(exc).split()) or type(exc).__name__)
                raise
            progress.finish(
                deploy_summary(
                    endpoint,
                    model,
                    sample,
                    progress=progress,
                    steps=progress.steps,
                    bench=self.bench if args.bench is None else args.bench,
                    demo=self.demo if args.demo is None else args.demo,
                    bench_seconds=self.bench_seconds,
                )
            )
            if self.rich and (self.demo if args.demo is None else args.demo):
                from IPython.display import display

                display(endpoint.demo())  # the demo inline; the summary links the shareable page
            return endpoint

    def _parse(self, magic: Callable[..., Any], line: str) -> argparse.Namespace:
        """``parse_argstring`` with a "did you mean" for a mistyped option."""
        try:
            return parse_argstring(magic, line)
        except UsageError as exc:
            hint = _option_hint(str(exc), magic.parser)  # type: ignore[attr-defined]
            if hint is None:
                raise
            raise UsageError(f"{str(exc).strip()} ({hint})") from exc

    def _change(self, call: Callable[..., Endpoint], *args: Any) -> Endpoint:
        """Run a core call that changes which versions serve, with its progress shown live."""
        progress = ProgressReporter(self.rich)
        try:
            endpoint = call(*args, progress=progress)
        except BaseException as exc:
            if progress.steps:
                progress.fail(" ".join(str(exc).split()) or type(exc).__name__)
            raise
        progress.done()
        return endpoint

    def _expression(self, text: str | None, what: str) -> Any:
        return None if text is None else evaluate(_unquote(text), self.namespace, what=what)

    @line_magic
    def deployments(self, line: str = "") -> DeploymentTable:
        """The deployments that run now: name, version, runtime, live status, traffic split
        between versions, URL (and why a guard took a canary's traffic back, when one did)."""
        with self.readable_errors():
            if line.strip():
                raise UsageError(f"%deployments takes no arguments; got {line.strip()!r}")
            return DeploymentTable(api.deployment_views())

    @magic_arguments()
    @argument("names", nargs="*", metavar="NAME", help="deployments to stop")
    @argument("--all", action="store_true", help="stop every running deployment")
    @argument(
        "-f",
        "--force",
        action="store_true",
        help="with --all, stop deployments made by another session or kernel too",
    )
    @line_magic
    def undeploy(self, line: str) -> None:
        """Stop deployments by name, or all of them (others' only with --force)."""
        with self.readable_errors():
            args = self._parse(self.undeploy, line)
            if bool(args.names) == args.all:
                raise UsageError("give the names of deployments to stop, or --all (not both)")
            others: list[str] = []
            if args.all:
                views = api.deployment_views()
                names = [v.name for v in views if args.force or not v.made_elsewhere]
                others = [f"{v.name} ({v.owner})" for v in views if v.name not in names]
            else:
                names = args.names
            if not names and not others:
                print("nothing to stop: no deployments are running")
            for name in names:
                versions = api.undeploy(name)
                print(f"stopped {name} (version {', '.join(map(str, versions))})")
            if others:
                raise UsageError(
                    f"not stopping {len(others)} deployment(s) made by another session: "
                    f"{', '.join(others)}; %undeploy --all --force stops them too"
                )

    @magic_arguments()
    @argument("name", metavar="NAME", help="the deployment")
    @argument(
        "-v",
        "--version",
        type=int,
        help="the version to promote (default: the newest canary or shadow)",
    )
    @line_magic
    def promote(self, line: str) -> VersionsView:
        """Give a candidate version all the traffic and make it the stable one."""
        return self._move(self.promote, line, api.promote, "promoted v{}")

    @magic_arguments()
    @argument("name", metavar="NAME", help="the deployment")
    @argument(
        "-v",
        "--version",
        type=int,
        help="the version to serve (default: drop the canary or shadow, else the previous one)",
    )
    @line_magic
    def rollback(self, line: str) -> VersionsView:
        """Send all traffic back to the stable version (or serve an earlier version)."""
        return self._move(self.rollback, line, api.rollback, "rolled back to v{}")

    def _move(
        self, magic: Callable[..., Any], line: str, change: Callable[..., Any], done: str
    ) -> VersionsView:
        """``NAME [-v VERSION]`` magics that move traffic (``%promote``, ``%rollback``)."""
        with self.readable_errors():
            args = self._parse(magic, line)
            endpoint = self._change(change, _unquote(args.name), args.version)
            return VersionsView.of(endpoint.view(), done.format(endpoint.version))

    @magic_arguments()
    @argument("name", metavar="NAME", help="the deployment")
    @argument(
        "weights",
        nargs="*",
        metavar="VERSION=PERCENT",
        help="the new split, e.g. 1=50 2=50 (percents summing to 100); none: show the split",
    )
    @line_magic
    def traffic(self, line: str) -> VersionsView:
        """Show how a deployment's traffic is split between its versions, or set the split."""
        with self.readable_errors():
            args = self._parse(self.traffic, line)
            name = _unquote(args.name)
            if not args.weights:
                return VersionsView.of(api.get(name).view())
            weights = parse_weights(args.weights)
            endpoint = self._change(api.set_traffic, name, weights)
            return VersionsView.of(endpoint.view(), "traffic set")

    @magic_arguments()
    @argument("name", metavar="NAME", help="the deployment")
    @argument(
        "data",
        nargs="*",
        metavar="X [y]",
        help="rows to send to every version (and their true labels or targets), e.g. x_test"
        " y_test; none: the live numbers of the traffic served so far",
    )
    @line_magic
    def compare(self, line: str) -> Any:
        """Compare a deployment's versions: latency, errors, agreement (and accuracy with y)."""
        with self.readable_errors():
            args = self._parse(self.compare, line)
            if len(args.data) > 2:
                raise UsageError(
                    f"%compare takes NAME, then at most X and y; got {' '.join(args.data)!r}"
                )
            x, y = (self._expression(text, what) for text, what in _pad(args.data))
            return api.compare(_unquote(args.name), x, y)

    @magic_arguments()
    @argument("name", metavar="NAME", help="the deployment")
    @argument(
        "-w",
        "--window",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how far back the charts reach (1-600 s, default 60)",
    )
    @argument(
        "-e",
        "--every",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="seconds between refreshes (default 3)",
    )
    @line_magic
    def monitor(self, line: str) -> Any:
        """Live charts of a deployment (request rate, errors, p50/p99 latency, batch size,
        queue time; a line per version) and its drift, refreshed in the background while shown.

        Returns the Monitor widget (``m = %monitor digits``; ``m.close()`` stops it); in a
        terminal, the numbers of the window once."""
        with self.readable_errors():
            args = self._parse(self.monitor, line)
            name = _unquote(args.name)
            api.get(name)  # an unknown name is one clear line, not an empty chart
            if not self.rich:
                return api.stats(name, args.window)
            from nbdeploy.jupyter.monitor import Monitor

            return Monitor(name, window=args.window, every=args.every)

    @magic_arguments()
    @argument("name", metavar="NAME", help="the deployment")
    @argument("--kserve", action="store_true", help="a KServe InferenceService")
    @argument("--registry", metavar="HOST:PORT/PREFIX", help="push the image there first")
    @argument("--version", type=int, help="the version (default: the serving one)")
    @argument("-n", "--namespace", help="the Kubernetes namespace")
    @argument("-o", "--output", metavar="DIR", help="also write the YAML to DIR")
    @line_magic
    def k8s(self, line: str) -> K8sView:
        """The Kubernetes (or KServe) manifests for the name's pushed image, with a copy
        button and the ``kubectl`` lines; ``--registry`` pushes the image first."""
        with self.readable_errors():
            args = self._parse(self.k8s, line)
            name = _unquote(args.name)
            if args.registry:
                api.push(name, registry=args.registry, version=args.version)
            manifests = api.kubernetes(
                name,
                kind="kserve" if args.kserve else "deployment",
                version=args.version,
                namespace=args.namespace,
                output_dir=args.output,
            )
            return K8sView(manifests.yaml(), manifests.kubectl(), manifests.notes)


class K8sView:
    """Manifests in a notebook: the YAML with a copy button, then the ``kubectl`` lines."""

    def __init__(self, yaml: str, commands: Sequence[str], notes: Sequence[str]) -> None:
        self.yaml = yaml
        self.commands = list(commands)
        self.notes = list(notes)

    def __repr__(self) -> str:
        lines = [f"# {note}" for note in self.notes]
        return "\n".join([*lines, self.yaml.rstrip(), "", *self.commands])

    def _repr_html_(self) -> str:
        import html

        copy = (
            "navigator.clipboard.writeText(this.nextElementSibling.textContent)"
            ".then(() => { this.textContent = 'Copied'; })"
        )
        notes = "".join(f"<div>{html.escape(note)}</div>" for note in self.notes)
        commands = html.escape("\n".join(self.commands))
        return (
            '<div class="nbdeploy-k8s">'
            f'<div style="opacity:.75">{notes}</div>'
            f'<button type="button" title="Copy the YAML" onclick="{html.escape(copy)}">'
            "Copy YAML</button>"
            f"<pre>{html.escape(self.yaml)}</pre>"
            f"<pre>{commands}</pre></div>"
        )


def _pad(data: Sequence[str]) -> list[tuple[str | None, str]]:
    """``%compare``'s optional X and y, each with the name its errors use."""
    texts = [*data, None, None][:2]
    return list(zip(texts, ("X", "y"), strict=True))


def _guards(args: argparse.Namespace) -> dict[str, Any] | None:
    """The guard options that were given, as ``deploy(guards=...)`` takes them."""
    given = {
        key: getattr(args, key)
        for key in ("max_error_rate", "min_agreement", "max_p99_ms", "min_requests")
        if getattr(args, key) is not None
    }
    return given or None


def deploy_summary(
    endpoint: Endpoint,
    model: Any,
    sample: Any,
    *,
    progress: Callable[[ProgressEvent], None],
    steps: Sequence[ProgressEvent],
    bench: bool,
    demo: bool,
    bench_seconds: float,
    report: BenchmarkReport | None = None,
) -> DeploySummary:
    """Everything after the endpoint is up, as ``%deploy`` and ``DeployPanel`` both show it.

    ``progress`` gets the benchmark and demo steps; ``steps`` (read at the end) are the steps
    listed in the summary; ``report`` is an earlier measurement (the panel's benchmark button).
    A failure here is a note, not a lost endpoint.
    """
    from nbdeploy.bench import BenchmarkReport

    versions = endpoint.versions
    deployed = max((v.version for v in versions), default=endpoint.version)
    served = api.model(endpoint.name, deployed)
    selection = BenchmarkReport.from_dict(served.benchmark) if served.benchmark else None
    notes: list[str] = []
    measured = report
    if bench:
        measured = _measure(endpoint, served, model, sample, progress, notes, bench_seconds)
    demo_url = None
    if demo:
        progress(ProgressEvent("demo", "starting the demo page"))
        try:
            direct = launch_demo_url(endpoint.name)
            # Through the Jupyter server when the kernel runs under one: remote users first.
            demo_url = api.links(endpoint.name).get("demo") or direct
        except NbdeployError as exc:
            notes.append(f"demo: {exc}")
    return DeploySummary.from_endpoint(
        endpoint,
        served,
        report=measured or selection,
        variants_report=selection or measured,
        demo_url=demo_url,
        notes=notes,
        steps=[str(step) for step in steps],
        versions=versions,
    )


def _measure(
    endpoint: Endpoint,
    served: ModelArtifact,
    model: Any,
    sample: Any,
    progress: Callable[[ProgressEvent], None],
    notes: list[str],
    seconds: float,
) -> BenchmarkReport | None:
    """In-process (served variant, plus the original model) and over-HTTP figures, merged."""
    if sample is None:
        notes.append("benchmark skipped: --bench needs --sample")
        return None
    targets: list[Any] = [served]
    if model_kind(model) in EAGER_FRAMEWORKS:
        targets.insert(0, model)
    try:
        progress(ProgressEvent("benchmark", "in-process, batch sizes 1 and 8"))
        local = api.benchmark(targets, sample, batch_sizes=(1, 8), time_budget_s=seconds / 2)
        progress(ProgressEvent("benchmark", "over HTTP, concurrency 1 and 4"))
        remote = api.benchmark(
            endpoint,
            sample,
            batch_sizes=(1,),
            concurrency=(1, 4),
            payloads=("binary",),
            duration_s=seconds,
            warmup=2,
        )
    except NbdeployError as exc:
        notes.append(f"benchmark failed: {exc}")
        return None
    return local.merge(remote)


def _is_file(text: str) -> bool:
    try:
        return Path(_unquote(text)).is_file()
    except (OSError, ValueError):
        return False


def _option_hint(message: str, parser: argparse.ArgumentParser) -> str | None:
    """``did you mean --quantize?`` for the unknown options an argparse message names."""
    match = re.search(r"unrecognized arguments: (.*)", message)
    if match is None:
        return None
    options = [option for action in parser._actions for option in action.option_strings]
    for token in match.group(1).split():
        if token.startswith("--"):
            guess = difflib.get_close_matches(token.split("=", 1)[0], options, n=1, cutoff=0.6)
            if guess:
                return f"did you mean {guess[0]}?"
    return None


def _is_quoted_expression(token: str) -> bool:
    """A quoted MODEL with spaces is an expression; a quoted path stays a string literal."""
    return _unquote(token) != token and " " in token


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics (``%load_ext nbdeploy`` calls this through ``nbdeploy``)."""
    ipython.register_magics(DeployMagic)
