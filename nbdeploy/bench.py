"""Latency and throughput of ONNX artifacts and their original models, measured side by side.

Every target is measured in this process, one after another, on the same sample tiled to each
batch size: on a small shared CPU, absolute times are noisy and only medians and ratios taken
in one run mean something.
"""

from __future__ import annotations

import gc
import html
import os
import platform
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from nbdeploy import _format, _ort, _tensors
from nbdeploy._errors import BenchmarkError, ExportError, NbdeployError
from nbdeploy._types import Signature
from nbdeploy.artifact import ModelArtifact

MAX_RUNS = 10_000
MIN_RUNS_UNDER_BUDGET = 3
PLOT_LABEL_WIDTH = 24
"""Target labels on the benchmark plot wrap at this many characters."""
EAGER_DISTRIBUTIONS = {"sklearn": "scikit-learn"}


@dataclass
class BenchmarkResult:
    """One measured (or skipped) target at one batch size; times are per call, in ms."""

    target: str
    engine: str
    batch_size: int
    concurrency: int = 1
    runs: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    throughput: float | None = None
    size_bytes: int | None = None
    variant: str | None = None
    status: str = "ok"
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class BenchmarkReport:
    """The rows of one benchmark plus the machine and settings they were measured with."""

    results: list[BenchmarkResult]
    machine: dict[str, Any] = field(default_factory=lambda: machine_info())
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": dict(self.machine),
            "settings": dict(self.settings),
            "results": [r.to_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkReport:
        return cls(
            results=[BenchmarkResult.from_dict(r) for r in data.get("results", [])],
            machine=dict(data.get("machine") or {}),
            settings=dict(data.get("settings") or {}),
        )

    def latency_ms(self, batch_size: int = 1, *, engine: str | None = None) -> dict[str, float]:
        """Median latency by target label, for the rows measured at ``batch_size``, one caller."""
        return {
            r.target: r.p50_ms
            for r in self.results
            if r.ok
            and r.batch_size == batch_size
            and r.concurrency == 1
            and r.p50_ms is not None
            and (engine is None or r.engine == engine)
        }

    def best(self, batch_size: int = 1, *, engine: str | None = "onnxruntime") -> str | None:
        """Label of the fastest measured target at ``batch_size``.

        Only onnxruntime rows by default: an eager baseline cannot be deployed.
        """
        latencies = self.latency_ms(batch_size, engine=engine)
        return min(latencies, key=latencies.__getitem__) if latencies else None

    def merge(self, other: BenchmarkReport) -> BenchmarkReport:
        """A new report with this report's rows followed by ``other``'s (e.g. HTTP rows)."""
        settings = dict(self.settings)
        for key, value in other.settings.items():
            settings.setdefault(key, value)
        return BenchmarkReport(
            results=[*self.results, *other.results],
            machine={**other.machine, **self.machine},
            settings=settings,
        )

    def table(self) -> str:
        """An aligned plain-text table for terminals and logs."""
        headers, rows = self._rows()
        return _format.text_table(headers, rows, right=range(2, len(headers) - 1))

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        headers, rows = self._rows()
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
            for row in rows
        )
        caption = html.escape(_machine_line(self.machine))
        return (
            f"<table><caption style='caption-side:bottom'>{caption}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        show_concurrency = any(r.concurrency != 1 for r in self.results)
        headers = ["target", "engine", "batch"]
        headers += ["conc"] if show_concurrency else []
        headers += ["runs", "p50 ms", "p90 ms", "p99 ms", "mean ms", "samples/s", "size"]
        headers.append("status")
        rows = []
        for r in self.results:
            row = [r.target, r.engine, str(r.batch_size)]
            row += [str(r.concurrency)] if show_concurrency else []
            row += [
                str(r.runs) if r.ok else "",
                _format.ms(r.p50_ms),
                _format.ms(r.p90_ms),
                _format.ms(r.p99_ms),
                _format.ms(r.mean_ms),
                f"{r.throughput:,.0f}" if r.throughput is not None else "",
                _format.size(r.size_bytes),
            ]
            row.append(r.status if not r.note else f"{r.status}: {r.note}")
            rows.append(row)
        return headers, rows

    def plot(self) -> Any:
        """A matplotlib Figure: median latency per target, p99 whisker and p90 mark, per batch size.

        The machine it was measured on is captioned once, above the panels; the legend sits
        below them (outside every axes, so it never hides a whisker); long target labels wrap.
        Built on ``matplotlib.figure.Figure`` directly, so it touches no pyplot global state and
        works under any backend (notebooks display it; ``fig.savefig`` writes it).
        """
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        measured = [r for r in self.results if r.ok and r.p50_ms is not None]
        batch_sizes = sorted({r.batch_size for r in measured}) or [1]
        labels = list(dict.fromkeys(_plot_label(r) for r in measured))
        lines = sum(label.count("\n") + 1 for label in labels) or 1
        fig = Figure(
            figsize=(max(5.2, 4.4 * len(batch_sizes)), 2.0 + 0.3 * lines + 0.15 * len(labels)),
            layout="constrained",
        )
        axes = fig.subplots(1, len(batch_sizes), squeeze=False)[0]
        handles: list[Any] = []
        for ax, batch in zip(axes, batch_sizes, strict=True):
            rows = {_plot_label(r): r for r in measured if r.batch_size == batch}
            ax.set_title(f"batch size {batch}", fontsize="medium")
            ax.set_xlabel("latency per call (ms)")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
            if not rows:
                ax.text(0.5, 0.5, "nothing measured", ha="center", va="center")
                ax.set_yticks([])
                continue
            names = [name for name in labels if name in rows]
            p50 = np.array([rows[n].p50_ms for n in names], dtype=float)
            p90 = np.array([rows[n].p90_ms or np.nan for n in names], dtype=float)
            p99 = np.array([rows[n].p99_ms or np.nan for n in names], dtype=float)
            y = np.arange(len(names))
            bars = ax.barh(y, p50, color="#4c72b0", label="p50 (median)")
            whiskers = ax.errorbar(
                p50,
                y,
                xerr=[np.zeros_like(p50), np.nan_to_num(p99 - p50)],
                fmt="none",
                ecolor="black",
                capsize=3,
                label="p99",
            )
            (marks,) = ax.plot(p90, y, "|", color="#dd8452", markersize=14, mew=2, label="p90")
            handles = handles or [bars, marks, whiskers]
            ax.set_yticks(y, names, fontsize="small")
            ax.invert_yaxis()
            ax.set_xlim(left=0, right=float(np.nanmax(np.fmax(p99, p50))) * 1.08)
        if handles:
            fig.legend(
                handles=handles,
                loc="outside lower center",
                ncol=len(handles),
                fontsize="small",
                frameon=False,
            )
        fig.suptitle(_machine_line(self.machine), fontsize="small")
        return fig


def machine_info() -> dict[str, Any]:
    """What a latency number depends on: cores, CPU, versions, and how busy the machine was."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(affinity) if affinity is not None else os.cpu_count(),
        "cpu": _cpu_name(),
        "machine": platform.machine(),
        "system": platform.system(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": _version("onnxruntime"),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def benchmark(
    targets: Any,
    sample: Any,
    *,
    batch_sizes: Sequence[int] = (1, 8),
    warmup: int = 5,
    min_runs: int = 20,
    time_budget_s: float = 2.0,
    threads: int | None = None,
    baseline: bool = True,
    max_runs: int = MAX_RUNS,
) -> BenchmarkReport:
    """Measure each target at each batch size on ``sample`` tiled to that size.

    ``targets`` is a ModelArtifact, an artifact directory, an ``.onnx`` path, a torch / Keras /
    TensorFlow / scikit-learn model (timed eagerly), or a list of these. Variants whose quantization failed
    or changed nothing become "skipped" rows. With ``baseline``, an fp32 artifact that still
    holds its original model also gets an eager row, the number the speed-up is measured against.

    Each measurement makes ``warmup`` untimed calls, then times calls until it has spent
    ``time_budget_s`` and made ``min_runs``, or ``max_runs`` at most. A model too slow for
    ``min_runs`` to fit in the budget stops at the budget once it has 3 calls, so a benchmark
    never runs away.
    """
    sizes = _check_options(batch_sizes, warmup, min_runs, time_budget_s, threads, max_runs)
    plans = _plan(targets, baseline)
    effective_threads = threads or os.cpu_count() or 1
    feeds = {id(plan): plan.feeds(sample) for plan in plans}
    results: list[BenchmarkResult] = []
    engines: set[str] = set()
    for plan in plans:
        if plan.skip_reason is not None:
            results.extend(
                plan.row(bs, status="skipped", note=_format.reason(plan.skip_reason))
                for bs in sizes
            )
            continue
        try:
            make_call = plan.load(effective_threads)
        except NbdeployError as exc:
            results.extend(plan.row(bs, status="failed", note=_format.reason(exc)) for bs in sizes)
            continue
        engines.add(plan.engine)
        with _torch_threads(plan.engine, effective_threads):
            for bs in sizes:
                results.append(
                    _measure_plan(
                        plan,
                        make_call,
                        feeds[id(plan)],
                        bs,
                        warmup=warmup,
                        min_runs=min_runs,
                        budget_s=time_budget_s,
                        max_runs=max(max_runs, min_runs),
                    )
                )
        del make_call
    if results and all(r.status == "failed" for r in results):
        raise BenchmarkError(f"no target could be measured: {results[0].note}")
    machine = machine_info()
    for engine in sorted(engines - {"onnxruntime"}):
        machine[engine] = _version(EAGER_DISTRIBUTIONS.get(engine, engine))
    settings = {
        "batch_sizes": list(sizes),
        "warmup": warmup,
        "min_runs": min_runs,
        "max_runs": max(max_runs, min_runs),
        "time_budget_s": time_budget_s,
        "threads": effective_threads,
    }
    return BenchmarkReport(results=results, machine=machine, settings=settings)


@dataclass(eq=False)
class _Plan:
    """What to measure for one target, before anything is loaded."""

    label: str
    engine: str
    variant: str | None = None
    size_bytes: int | None = None
    signature: Signature | None = None
    onnx_path: Path | None = None
    model: Any = None
    skip_reason: str | None = None
    encode: Callable[[Any], dict[str, np.ndarray]] | None = None
    """For a text model: raw texts to the graph's token feeds, timed with every call."""
    # ``onnx_path`` is the model file: ``model.onnx``, or a Python model's ``model.pkl``.

    def row(self, batch_size: int, **values: Any) -> BenchmarkResult:
        return BenchmarkResult(
            target=self.label,
            engine=self.engine,
            batch_size=batch_size,
            size_bytes=self.size_bytes,
            variant=self.variant,
            **values,
        )

    def feeds(self, sample: Any) -> dict[str, np.ndarray]:
        """The sample as named arrays for this target; raises InputError when it does not fit."""
        if self.skip_reason is not None:
            return {}
        if sample is None and self.onnx_path is not None and self.signature is not None:
            return _tensors.random_sample(self.signature, batch_size=1, seed=0)
        if self.signature is not None:
            return _tensors.as_feeds(self.signature, sample)
        parts = _tensors.sample_parts(sample)
        return parts if isinstance(parts, dict) else {str(i): a for i, a in enumerate(parts)}

    def load(self, threads: int) -> Callable[[dict[str, np.ndarray]], Callable[[], Any]]:
        """Load the target once; return a function turning feeds into a zero-argument call."""
        if self.onnx_path is not None and self.onnx_path.suffix == ".pkl":
            from nbdeploy.exporters._python import PythonSession

            python = PythonSession(self.onnx_path.parent)
            names = [o.name for o in python.get_outputs()]
            return lambda feeds: lambda: python.run(names, feeds)
        if self.onnx_path is not None:
            sess = _ort.session(self.onnx_path, threads=threads)
            names = [o.name for o in sess.get_outputs()]
            if self.encode is not None:
                encode = self.encode
                return lambda feeds: lambda: sess.run(names, encode(feeds["text"]))
            return lambda feeds: lambda: sess.run(names, feeds)

        from nbdeploy.exporters import eager_runner

        def eager_call(feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
            # Positional parts were keyed "0", "1", ... for tiling: hand them back as a list.
            positional = all(key.isdigit() for key in feeds)
            return eager_runner(self.model, list(feeds.values()) if positional else feeds)

        return eager_call


def _measure_plan(
    plan: _Plan,
    make_call: Callable[[dict[str, np.ndarray]], Any],
    feeds: dict[str, np.ndarray],
    batch_size: int,
    *,
    warmup: int,
    min_runs: int,
    budget_s: float,
    max_runs: int,
) -> BenchmarkResult:
    fixed = plan.signature.fixed_batch if plan.onnx_path and plan.signature else None
    if fixed is not None and fixed != batch_size:
        return plan.row(
            batch_size, status="skipped", note=f"the model has a fixed batch size of {fixed}"
        )
    try:
        call = make_call(_tensors.repeat_to_batch(feeds, batch_size))
        times_ns = _time_calls(call, warmup, min_runs, budget_s, max_runs)
    except NbdeployError:
        raise
    except Exception as exc:
        return plan.row(batch_size, status="failed", note=_format.reason(exc, with_type=True))
    times_ms = times_ns / 1e6
    p50, p90, p99 = np.percentile(times_ms, [50, 90, 99])
    return plan.row(
        batch_size,
        runs=int(times_ms.size),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(times_ms.mean()),
        throughput=float(batch_size * times_ms.size / (times_ms.sum() / 1e3)),
    )


def _time_calls(
    call: Callable[[], Any], warmup: int, min_runs: int, budget_s: float, max_runs: int
) -> np.ndarray:
    """Per-call durations in ns; garbage collection is paused so it does not land in a sample."""
    for _ in range(warmup):
        call()
    budget_ns = int(budget_s * 1e9)
    times: list[int] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        while True:
            t0 = time.perf_counter_ns()
            call()
            t1 = time.perf_counter_ns()
            times.append(t1 - t0)
            runs, spent = len(times), t1 - start
            if runs >= max_runs:
                break
            if spent >= budget_ns and runs >= min(min_runs, MIN_RUNS_UNDER_BUDGET):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return np.asarray(times, dtype=np.float64)


def _plan(targets: Any, baseline: bool) -> list[_Plan]:
    if targets is None or (isinstance(targets, list | tuple) and not targets):
        raise BenchmarkError(
            "nothing to benchmark: pass a ModelArtifact, a list of artifacts, an .onnx path"
            " or a torch / Keras / TensorFlow / scikit-learn model"
        )
    items = list(targets) if isinstance(targets, list | tuple) else [targets]
    plans: list[_Plan] = []
    seen_models: set[int] = set()
    for item in items:
        artifact = ModelArtifact.find(item)
        if artifact is not None:
            source = artifact.source_model
            if baseline and artifact.ok and source is not None and id(source) not in seen_models:
                seen_models.add(id(source))
                plans.append(_eager_baseline(artifact))
            plans.append(_artifact_plan(artifact))
        elif isinstance(item, str | Path):
            plans.append(_onnx_file_plan(Path(item)))
        else:
            engine = _framework_of(item)
            if engine is None:
                raise BenchmarkError(
                    f"cannot benchmark a {type(item).__name__}: expected a ModelArtifact, an"
                    " .onnx path, or a torch / Keras / TensorFlow / scikit-learn model"
                )
            plans.append(_Plan(label=f"{engine} eager", engine=engine, model=item))
    _make_labels_unique(plans)
    return plans


def _artifact_plan(artifact: ModelArtifact) -> _Plan:
    plan = _Plan(
        label=artifact.label,
        engine="onnxruntime",
        variant=artifact.variant,
        signature=artifact.signature,
        onnx_path=artifact.path,
    )
    if not artifact.ok:
        quantization = artifact.quantization
        plan.skip_reason = quantization.reason or f"quantization {quantization.status}"
        return plan
    if not artifact.path.is_file():
        raise BenchmarkError(f"artifact {artifact.label} has no model file at {artifact.path}")
    plan.size_bytes = artifact.size_bytes
    if "tokenization" in artifact.metadata:
        from nbdeploy.exporters._transformers import text_encoder

        plan.encode = text_encoder(artifact)
    return plan


def _eager_baseline(artifact: ModelArtifact) -> _Plan:
    engine = _framework_of(artifact.source_model)
    plan = _Plan(
        label=f"{artifact.name}:{engine or artifact.framework} eager",
        engine=engine or artifact.framework,
        signature=artifact.signature,
        model=artifact.source_model,
    )
    if engine is None:
        plan.skip_reason = f"cannot run a {type(artifact.source_model).__name__} eagerly"
    return plan


def _onnx_file_plan(path: Path) -> _Plan:
    if not path.is_file():
        raise BenchmarkError(f"cannot benchmark {path}: no such file")
    if path.suffix.lower() != ".onnx":
        raise BenchmarkError(
            f"cannot benchmark {path}: expected an .onnx file or an artifact directory"
        )
    label = path.stem if path.stem != "model" else path.parent.name
    try:
        signature = Signature.from_onnx(path)
    except ExportError:
        # Non-tensor outputs (a ZipMap): time the model nbdeploy would serve instead.
        from nbdeploy.exporters import as_artifact

        plan = _artifact_plan(as_artifact(path))
        plan.label = label
        return plan
    except Exception as exc:
        raise BenchmarkError(f"cannot read {path} as an ONNX model: {exc}") from exc
    return _Plan(
        label=label,
        engine="onnxruntime",
        size_bytes=path.stat().st_size,
        signature=signature,
        onnx_path=path,
    )


def _make_labels_unique(plans: list[_Plan]) -> None:
    """Rows are looked up by label, so two targets never share one."""
    seen: dict[str, int] = {}
    for plan in plans:
        count = seen.get(plan.label, 0) + 1
        seen[plan.label] = count
        if count > 1:
            plan.label = f"{plan.label} ({count})"


def _framework_of(model: Any) -> str | None:
    """The framework an original model can be run eagerly with, or None."""
    from nbdeploy.exporters import framework_of

    try:
        framework = framework_of(model)
    except NbdeployError:
        return None
    return None if framework == "onnx" else framework


@contextmanager
def _torch_threads(engine: str, threads: int) -> Iterator[None]:
    """Give torch as many intra-op threads as onnxruntime gets, and restore the old count."""
    if engine != "torch":
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_options(
    batch_sizes: Sequence[int],
    warmup: int,
    min_runs: int,
    time_budget_s: float,
    threads: int | None,
    max_runs: int,
) -> list[int]:
    if isinstance(batch_sizes, int) and not isinstance(batch_sizes, bool):
        batch_sizes = (batch_sizes,)
    sizes = list(batch_sizes) if isinstance(batch_sizes, Sequence) else []
    if not sizes or any(
        isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1 for b in sizes
    ):
        raise BenchmarkError(
            f"batch_sizes must be positive integers, like (1, 8); got {batch_sizes!r}"
        )
    for name, value, least in (
        ("warmup", warmup, 0),
        ("min_runs", min_runs, 1),
        ("max_runs", max_runs, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise BenchmarkError(f"{name} must be an integer >= {least}; got {value!r}")
    if not isinstance(time_budget_s, int | float) or time_budget_s < 0:
        raise BenchmarkError(
            f"time_budget_s must be a number of seconds >= 0; got {time_budget_s!r}"
        )
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise BenchmarkError(f"threads must be a positive integer or None; got {threads!r}")
    return [int(b) for b in dict.fromkeys(sizes)]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        module = sys.modules.get(distribution)
        return getattr(module, "__version__", None)


def _machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine.get('cpu') or machine.get('machine', '?')}, {machine.get('usable_cpus', '?')}"
        f" CPUs, onnxruntime {machine.get('onnxruntime', '?')}, Python {machine.get('python', '?')}"
    )


def _plot_label(result: BenchmarkResult) -> str:
    label = result.target
    if result.engine.startswith("http-") and label.endswith(" http"):
        label = label.removesuffix(" http")
    if result.engine != "onnxruntime" and result.engine not in label:
        label = f"{label} [{result.engine}]"
    label = label if result.concurrency == 1 else f"{label} x{result.concurrency}"
    # Wrap at spaces, hyphens and after "name:" (a marked space, removed again once wrapped).
    wrapped = textwrap.fill(label.replace(":", ":\0 "), PLOT_LABEL_WIDTH)
    return wrapped.replace(":\0 ", ":").replace(":\0", ":")
