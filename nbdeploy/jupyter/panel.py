"""DeployPanel: export, quantize, benchmark and deploy a notebook model from an ipywidgets UI.

Every button makes one ``nbdeploy.api`` call. The call runs on a worker thread so the kernel
stays free to process widget messages (the panel keeps updating while a model exports);
``wait()`` joins that thread, which is how tests and scripts drive the panel without a browser.
While the panel is displayed, a timer thread re-reads the deployment list every
``refresh_interval`` seconds; it stops when the panel is closed or no longer shown.
The "Monitor" tab shows live charts of one chosen deployment (a :class:`Monitor`, refreshing
only while that tab is selected).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as widgets

from nbdeploy import _format, api
from nbdeploy._errors import NbdeployError
from nbdeploy.jupyter import (
    current_shell,
    default_name,
    evaluate,
    find_models,
    find_samples,
    launch_demo_url,
)
from nbdeploy.jupyter.magics import deploy_summary
from nbdeploy.jupyter.monitor import Monitor
from nbdeploy.jupyter.render import (
    BenchmarkView,
    DeploySummary,
    esc,
    variant_rows,
    variants_html,
    variants_text,
)
from nbdeploy.vocabulary import (
    AUTO_CANDIDATES,
    QUANTIZE_CHOICES,
    RUNTIME_CHOICES,
    DeploymentView,
    ProgressEvent,
    Stage,
    VersionView,
    made_elsewhere,
)

NO_SAMPLE = ""
MAX_LOG_LINES = 200
LOG_STYLE = (
    "font-family:monospace;font-size:85%;line-height:1.3;max-height:12em;overflow-y:auto;"
    "display:flex;flex-direction:column-reverse;"
    "border:1px solid #d0d7de;border-radius:4px;padding:4px"
)
"""A reversed flex column keeps the scroll position at the newest (last) line."""
LINE_STYLE = "white-space:pre-wrap;margin:0"


def log_html(lines: list[str]) -> str:
    """Already-escaped lines, one ``<div>`` each (single-spaced), scrolled to the last one."""
    body = "".join(f"<div style='{LINE_STYLE}'>{line}</div>" for line in lines)
    return f"<div style='{LOG_STYLE}'><div>{body}</div></div>"


def _split(versions: list[VersionView]) -> str:
    """``traffic: v1 90% · v2 10%`` for a log line."""
    shares = " · ".join(f"v{v.version} {v.weight}%" for v in versions if v.weight)
    return f"traffic: {shares or 'none'}"


def _bundle(obj: Any) -> dict[str, Any]:
    """An Output-widget display record built from the object's own reprs (no shell needed)."""
    data = {"text/plain": repr(obj)}
    if hasattr(obj, "_repr_html_"):
        data["text/html"] = obj._repr_html_()
    return {"output_type": "display_data", "data": data, "metadata": {}}


class _VariantsView:
    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows

    def _repr_html_(self) -> str:
        return variants_html(self.rows)

    def __repr__(self) -> str:
        return variants_text(self.rows)


def version_label(version: VersionView) -> str:
    """``v2 · 10% · canary · 120 requests · 0 errors · p99 3.10 ms · agrees 99.2%`` as HTML."""
    parts = [f"<b>v{version.version}</b>", f"{version.weight}%", esc(version.role)]
    if version.requests is not None:
        parts.append(f"{version.requests} requests")
    if version.errors is not None:
        color = "#cf222e" if version.errors else "inherit"
        parts.append(f"<span style='color:{color}'>{version.errors} errors</span>")
    if version.p99_ms is not None:
        parts.append(f"p99 {_format.ms(version.p99_ms)} ms")
    if version.agreement is not None:
        parts.append(f"agrees {version.agreement:.1%}")
    return " &middot; ".join(parts)


class VersionLine(widgets.HBox):
    """One version inside a deployment row, with promote / stop-version buttons (hidden on the
    stable version: promoting it changes nothing, and stopping it is stopping the deployment)."""

    def __init__(self, version: VersionView) -> None:
        self.version: int = version.version
        self.label = widgets.HTML("")
        self.promote_button = widgets.Button(description="promote", icon="arrow-up")
        self.stop_button = widgets.Button(description="stop version", icon="stop")
        for button in (self.promote_button, self.stop_button):
            button.layout = widgets.Layout(width="auto")
        super().__init__([self.label, self.promote_button, self.stop_button])
        self.layout = widgets.Layout(margin="0 0 0 24px")
        self.update(version)

    def update(self, version: VersionView) -> None:
        self.label.value = version_label(version)
        shown = "none" if version.role == "stable" else None
        self.promote_button.layout.display = self.stop_button.layout.display = shown

    @property
    def buttons(self) -> list[widgets.Button]:
        return [self.promote_button, self.stop_button]


VersionAction = Callable[[str, int], None]


class DeploymentRow(widgets.VBox):
    """One running deployment: its stop / rollback / logs / demo buttons, a line per version
    (weight, role, live requests and errors, promote / stop-version), the guard's reason when
    one took a canary's traffic back, its own logs, and a confirmation question when asked."""

    def __init__(
        self,
        view: DeploymentView,
        *,
        promote: VersionAction | None = None,
        stop_version: VersionAction | None = None,
    ) -> None:
        self.name: str = view.name
        self.owner: str = view.owner
        self._promote = promote
        self._stop_version = stop_version
        self._on_confirm: Callable[[], None] | None = None
        self.label = widgets.HTML("")
        self.stop_button = widgets.Button(description="stop", icon="stop", button_style="danger")
        self.rollback_button = widgets.Button(description="rollback", icon="undo")
        self.logs_button = widgets.Button(description="logs", icon="file-text")
        self.demo_button = widgets.Button(description="demo", icon="external-link")
        self.monitor_button = widgets.Button(description="monitor", icon="line-chart")
        self.confirm_button = widgets.Button(description="stop", button_style="danger")
        self.cancel_button = widgets.Button(description="cancel")
        for button in (
            self.stop_button,
            self.rollback_button,
            self.logs_button,
            self.demo_button,
            self.monitor_button,
            self.confirm_button,
            self.cancel_button,
        ):
            button.layout = widgets.Layout(width="auto")
        self.version_lines: dict[int, VersionLine] = {}
        self.versions_box = widgets.VBox([])
        self.guard_view = widgets.HTML("")
        self.question = widgets.HTML("")
        self.confirm_box = widgets.HBox([])
        self.logs_view = widgets.HTML("")
        self.cancel_button.on_click(lambda _: self.forget_question())
        self.confirm_button.on_click(lambda _: self.confirm())
        self.update(view)
        super().__init__(
            [
                widgets.HBox(
                    [
                        self.label,
                        self.stop_button,
                        self.rollback_button,
                        self.logs_button,
                        self.demo_button,
                        self.monitor_button,
                    ]
                ),
                self.versions_box,
                self.guard_view,
                self.confirm_box,
                self.logs_view,
            ]
        )

    def update(self, view: DeploymentView) -> None:
        url = view.infer_url.removesuffix("/infer")
        self.owner = view.owner
        self.label.value = (
            f"<b>{esc(self.name)}</b> v{esc(view.version)} &middot; {esc(view.runtime)}"
            f" &middot; {esc(view.status)} &middot; <a href='{esc(url)}' target='_blank'>"
            f"<code>{esc(url)}</code></a>"
        )
        self.guard_view.value = (
            f"<span style='color:#cf222e'>guard: {esc(view.guard)}</span>" if view.guard else ""
        )
        lines: dict[int, VersionLine] = {}
        for version in view.versions:
            line = self.version_lines.get(version.version)
            if line is None:
                line = self._new_line(version)
            else:
                line.update(version)
            lines[version.version] = line
        if list(lines) != list(self.version_lines) or not self.versions_box.children:
            self.versions_box.children = list(lines.values())
        self.version_lines = lines

    def _new_line(self, version: VersionView) -> VersionLine:
        line = VersionLine(version)
        number = version.version
        if self._promote is not None:
            promote = self._promote
            line.promote_button.on_click(lambda _: promote(self.name, number))
        if self._stop_version is not None:
            stop_version = self._stop_version
            line.stop_button.on_click(lambda _: stop_version(self.name, number))
        return line

    @property
    def action_buttons(self) -> list[widgets.Button]:
        """The buttons that start work (disabled while the panel is busy)."""
        buttons = [self.stop_button, self.rollback_button, self.confirm_button, self.demo_button]
        for line in list(self.version_lines.values()):
            buttons += line.buttons
        return buttons

    def ask(self, question: str, then: Callable[[], None], *, answer: str = "stop") -> None:
        """Show ``question`` with [answer] [cancel] under the row; [answer] runs ``then``."""
        self._on_confirm = then
        self.question.value = esc(question)
        self.confirm_button.description = answer
        self.confirm_box.children = [self.question, self.confirm_button, self.cancel_button]

    def confirm(self) -> None:
        then, self._on_confirm = self._on_confirm, None
        self.forget_question()
        if then is not None:
            then()

    @property
    def asking(self) -> bool:
        return bool(self.confirm_box.children)

    def forget_question(self) -> None:
        self.confirm_box.children = []


class DeployPanel(widgets.VBox):
    """Pick a model and a sample from the namespace, then export / quantize / benchmark / deploy.

    ``namespace`` defaults to the IPython user namespace; pass a dict outside IPython.
    ``bench_seconds`` is the time budget of each benchmark measurement (target x batch size).
    """

    bench_seconds: float = 1.0
    refresh_interval: float = 5.0

    def __init__(self, namespace: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if namespace is None:
            shell = current_shell()
            if shell is None:
                raise NbdeployError(
                    "DeployPanel looks for models in the IPython namespace; outside IPython pass"
                    " namespace={'model': model, 'x': x}"
                )
            namespace = shell.user_ns
        self.namespace = namespace
        self.artifact: Any = None
        self.variants: list[Any] = []
        self.report: Any = None
        self.endpoint: Any = None
        self.log_lines: list[str] = []
        self._log_html: list[str] = []
        self._log_lock = threading.Lock()
        self.last_error: str | None = None
        self.deployment_rows: dict[str, DeploymentRow] = {}
        self.summary: DeploySummary | None = None
        self._rows_lock = threading.RLock()
        self._worker: threading.Thread | None = None
        self._refresher: threading.Thread | None = None
        self._stop_refreshing = threading.Event()
        self._busy = False
        self.monitor: Monitor | None = None
        self._build_widgets()
        self._build_monitor_tab()
        self.tabs = widgets.Tab(
            children=[widgets.VBox(self._layout()), self.monitor_tab],
            titles=("Deploy", "Monitor"),
        )
        self.tabs.observe(lambda _: self._monitor_tab_shown(), names="selected_index")
        super().__init__([self.tabs], **kwargs)
        self._view_count = 0
        self.observe(self._views_changed, names="_view_count")
        self.rescan()
        self.refresh()

    def _build_widgets(self) -> None:
        wide = {"style": {"description_width": "70px"}}
        self.model_picker = widgets.Dropdown(description="model", **wide)
        self.sample_picker = widgets.Dropdown(description="sample", **wide)
        self.sample_expression = widgets.Text(placeholder="or an expression, e.g. x_test[:8]")
        self.rescan_button = widgets.Button(icon="refresh", tooltip="look for models again")
        self.rescan_button.layout = widgets.Layout(width="40px")
        self.name_box = widgets.Text(description="name", placeholder="variable name", **wide)
        self.quantize_picker = widgets.Dropdown(
            options=QUANTIZE_CHOICES, value="none", description="quantize", **wide
        )
        self.runtime_picker = widgets.Dropdown(
            options=RUNTIME_CHOICES, value="auto", description="runtime", **wide
        )
        self.auth_box = widgets.Checkbox(value=True, description="require a bearer token")
        self.bench_box = widgets.Checkbox(value=False, description="benchmark over HTTP")
        self.demo_box = widgets.Checkbox(value=False, description="open the demo page")
        self.export_button = widgets.Button(description="export", icon="cube")
        self.quantize_button = widgets.Button(description="quantize", icon="compress")
        self.benchmark_button = widgets.Button(description="benchmark", icon="tachometer")
        self.deploy_button = widgets.Button(
            description="deploy", icon="rocket", button_style="primary"
        )
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0)
        self.status = widgets.Label("")
        self.log_view = widgets.HTML("")
        self.results = widgets.Output()
        self.refresh_button = widgets.Button(description="refresh", icon="refresh")
        self.deployments_box = widgets.VBox()

        self.rescan_button.on_click(lambda _: self.rescan())
        self.refresh_button.on_click(lambda _: self.refresh())
        self.export_button.on_click(lambda _: self._run_on_selection("export", self._export))
        self.quantize_button.on_click(lambda _: self._run_on_selection("quantize", self._quantize))
        self.benchmark_button.on_click(
            lambda _: self._run_on_selection("benchmark", self._benchmark)
        )
        self.deploy_button.on_click(lambda _: self._run_on_selection("deploy", self._deploy))
        for picker in (self.model_picker, self.sample_picker, self.sample_expression):
            picker.observe(lambda _: self._forget_exports(), names="value")

    def _layout(self) -> list[widgets.Widget]:
        return [
            widgets.HBox([self.model_picker, self.rescan_button]),
            widgets.HBox([self.sample_picker, self.sample_expression]),
            widgets.HBox([self.name_box, self.quantize_picker]),
            widgets.HBox([self.runtime_picker, self.auth_box]),
            widgets.HBox([self.bench_box, self.demo_box]),
            widgets.HBox(
                [
                    self.export_button,
                    self.quantize_button,
                    self.benchmark_button,
                    self.deploy_button,
                ]
            ),
            widgets.HBox([self.progress, self.status]),
            self.log_view,
            self.results,
            widgets.HTML("<b>deployments</b>"),
            self.refresh_button,
            self.deployments_box,
        ]

    def _build_monitor_tab(self) -> None:
        self.monitor_picker = widgets.Dropdown(
            description="deployment", options=[], style={"description_width": "80px"}
        )
        self.monitor_box = widgets.VBox([widgets.HTML("<i>no deployment chosen</i>")])
        self.monitor_tab = widgets.VBox([self.monitor_picker, self.monitor_box])
        self.monitor_picker.observe(lambda _: self._monitor_tab_shown(), names="value")

    @property
    def monitor_selected(self) -> bool:
        return self.tabs.selected_index == 1

    def show_monitor(self, name: str) -> None:
        """Open the Monitor tab on ``name`` (a row's monitor button)."""
        if name not in self.monitor_picker.options:
            self.monitor_picker.options = [*self.monitor_picker.options, name]
        self.monitor_picker.value = name
        self.tabs.selected_index = 1
        self._monitor_tab_shown()

    def _monitor_tab_shown(self) -> None:
        """Charts for the chosen deployment while the tab is selected; stopped otherwise."""
        name = self.monitor_picker.value
        current = self.monitor
        if not self.monitor_selected or not name:
            if current is not None:
                current.stop()
            return
        if current is not None and current.name == name:
            if not current.running:
                current.start()
                current.refresh()
            return
        if current is not None:
            current.close()
        self.monitor = Monitor(name)
        self.monitor_box.children = [self.monitor]

    @property
    def action_buttons(self) -> list[widgets.Button]:
        """The buttons that start work, disabled together while a task runs."""
        buttons = [
            self.export_button,
            self.quantize_button,
            self.benchmark_button,
            self.deploy_button,
        ]
        for row in list(self.deployment_rows.values()):
            buttons += row.action_buttons
        return buttons

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def log_text(self) -> str:
        return "\n".join(self.log_lines)

    def rescan(self) -> None:
        """Look for model and array variables in the namespace again."""
        models = find_models(self.namespace)
        samples = find_samples(self.namespace)
        keep_model, keep_sample = self.model_picker.value, self.sample_picker.value
        self.model_picker.options = [(f"{name}: {kind}", name) for name, kind in models.items()]
        if keep_model in models:
            self.model_picker.value = keep_model
        self.sample_picker.options = [("(none)", NO_SAMPLE)] + [
            (f"{name}: {description}", name) for name, description in samples.items()
        ]
        self.sample_picker.value = keep_sample if keep_sample in samples else NO_SAMPLE
        if not models:
            self._log("no model variables found: define one, then press the refresh icon")

    def refresh(self, *, quiet: bool = False) -> None:
        """Re-read the running deployments and their live status (rows that stay are kept,
        with their open logs and questions). ``quiet`` (the timer) does not log failures."""
        try:
            views = api.deployment_views()
        except NbdeployError as exc:
            if not quiet:
                self._fail(str(exc))
            return
        with self._rows_lock:
            rows: dict[str, DeploymentRow] = {}
            for view in views:
                row = self.deployment_rows.get(view.name)
                if row is None:
                    row = self._new_row(view)
                else:
                    row.update(view)
                for button in row.action_buttons:
                    button.disabled = self._busy
                rows[view.name] = row
            changed = list(rows) != list(self.deployment_rows)
            self.deployment_rows = rows
            names = list(rows)
            if list(self.monitor_picker.options) != names:
                chosen = self.monitor_picker.value
                self.monitor_picker.options = names
                self.monitor_picker.value = chosen if chosen in names else None
            if changed or not self.deployments_box.children:
                self.deployments_box.children = list(rows.values()) or [
                    widgets.HTML("<i>no deployments are running</i>")
                ]

    def _new_row(self, view: DeploymentView) -> DeploymentRow:
        row = DeploymentRow(view, promote=self.promote, stop_version=self.stop_version)
        name = view.name
        row.stop_button.on_click(lambda _: self.stop(name))
        row.rollback_button.on_click(lambda _: self.rollback(name))
        row.logs_button.on_click(lambda _: self.show_logs(name))
        row.demo_button.on_click(lambda _: self.open_demo(name))
        row.monitor_button.on_click(lambda _: self.show_monitor(name))
        return row

    def start_auto_refresh(self, interval: float | None = None) -> None:
        """Re-read the deployments every ``interval`` seconds on a timer thread (displaying
        the panel starts it; closing the panel or removing its last view stops it)."""
        if self._refresher is not None and self._refresher.is_alive():
            return
        every = self.refresh_interval if interval is None else interval
        stop = self._stop_refreshing = threading.Event()
        panel_ref = weakref.ref(self)

        def tick() -> None:
            while not stop.wait(every):
                panel = panel_ref()
                if panel is None or panel.comm is None:
                    return
                try:
                    panel.refresh(quiet=True)
                except Exception:  # a widget torn down mid-refresh: stop quietly
                    return
                del panel

        self._refresher = threading.Thread(target=tick, name="nbdeploy-panel-refresh", daemon=True)
        self._refresher.start()

    def stop_auto_refresh(self) -> None:
        stop = getattr(self, "_stop_refreshing", None)  # None when __init__ failed early
        if stop is not None:
            stop.set()

    @property
    def auto_refreshing(self) -> bool:
        return self._refresher is not None and self._refresher.is_alive()

    def _views_changed(self, change: dict[str, Any]) -> None:
        if change["new"] == 0 and change["old"]:
            self.stop_auto_refresh()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        self.start_auto_refresh()
        return super()._repr_mimebundle_(**kwargs)

    def close(self) -> None:
        self.stop_auto_refresh()
        if getattr(self, "monitor", None) is not None:
            self.monitor.close()
        super().close()

    def stop(self, name: str, *, confirmed: bool = False) -> None:
        """Stop ``name``; one made by another session or kernel asks first (a row question)."""
        row = self.deployment_rows.get(name)
        if row is not None:
            owner = row.owner
            if not confirmed and made_elsewhere(owner):
                row.ask(f"stop {name}, made by {owner}?", lambda: self.stop(name, confirmed=True))
                return
            row.forget_question()

        def task() -> None:
            versions = api.undeploy(name)
            self._log(f"stopped {name} (version {', '.join(map(str, versions))})")

        self._start(f"stop {name}", task, then=self.refresh)

    def stop_version(self, name: str, version: int, *, confirmed: bool = False) -> None:
        """Stop one version of ``name`` (its traffic goes to the stable one), after asking."""
        row = self.deployment_rows.get(name)
        if row is not None:
            if not confirmed:
                row.ask(
                    f"stop version {version} of {name}? its traffic goes to the stable version",
                    lambda: self.stop_version(name, version, confirmed=True),
                    answer="stop version",
                )
                return
            row.forget_question()

        def task() -> None:
            endpoint = api.stop_version(name, version)
            self._log(f"stopped version {version} of {name}; {_split(endpoint.versions)}")

        self._start(f"stop {name} v{version}", task, then=self.refresh)

    def promote(self, name: str, version: int | None = None) -> None:
        """Give ``version`` (default: the newest canary or shadow) all of ``name``'s traffic."""

        def task() -> None:
            endpoint = api.promote(name, version, progress=self._progress)
            self._log(f"promoted {name} v{endpoint.version}; {_split(endpoint.versions)}")

        self._start(f"promote {name}", task, then=self.refresh)

    def rollback(self, name: str) -> None:
        """Drop ``name``'s canary or shadow, or serve its previous version when it has none."""

        def task() -> None:
            endpoint = api.rollback(name, progress=self._progress)
            self._log(f"rolled back {name} to v{endpoint.version}; {_split(endpoint.versions)}")

        self._start(f"rollback {name}", task, then=self.refresh)

    def show_logs(self, name: str) -> None:
        """Open the last 100 log lines under the deployment's row; a second click closes them."""
        row = self.deployment_rows.get(name)
        if row is None:
            self._fail(f"no deployment named {name!r} in the list; press refresh")
            return
        if row.logs_view.value:
            row.logs_view.value = ""
            return
        try:
            text = api.get(name).logs(tail=100)
        except NbdeployError as exc:
            self._fail(str(exc))
            return
        lines = [esc(line) for line in (text or "(empty)").rstrip("\n").splitlines()]
        row.logs_view.value = (
            f"<details open><summary>logs of {esc(name)}</summary>{log_html(lines)}</details>"
        )

    def open_demo(self, name: str) -> None:
        def task() -> None:
            url = launch_demo_url(name)
            self._log(f"demo of {name}: {url}", link=url)

        self._start(f"demo {name}", task)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current background task has finished."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def _selection(self) -> tuple[str, Any, Any]:
        """The chosen model variable, the model and the sample, read on the caller's thread."""
        variable = self.model_picker.value
        if not variable:
            raise NbdeployError("pick a model first (the model dropdown is empty)")
        if variable not in self.namespace:
            raise NbdeployError(f"the variable {variable!r} is gone; press the refresh icon")
        expression = self.sample_expression.value.strip()
        if expression:
            sample = evaluate(expression, self.namespace, what="sample")
        elif self.sample_picker.value:
            sample = evaluate(self.sample_picker.value, self.namespace, what="sample")
        else:
            sample = None
        return variable, self.namespace[variable], sample

    def _name(self, variable: str, model: Any) -> str | None:
        return self.name_box.value.strip() or default_name(variable, model)

    def _forget_exports(self) -> None:
        """A different model or sample makes earlier exports and variants stale."""
        self.artifact, self.variants, self.report = None, [], None

    def _run_on_selection(self, title: str, task: Callable[[str, Any, Any], None]) -> None:
        """Resolve the model and sample here (widget values, user namespace), work off-thread."""
        try:
            variable, model, sample = self._selection()
        except NbdeployError as exc:
            self.last_error = None
            self._fail(str(exc))
            return
        self._start(title, lambda: task(variable, model, sample))

    def _start(
        self, title: str, task: Callable[[], None], then: Callable[[], None] | None = None
    ) -> None:
        """Run ``task`` on the worker thread, buttons disabled, failures as one log line."""
        if self._busy:
            self._log(f"busy: {title} waits until the current task has finished")
            return
        self.last_error = None
        self._set_busy(True, title)

        def work() -> None:
            try:
                task()
                self.progress.value = 1.0
                self.status.value = f"{title}: done"
            except NbdeployError as exc:
                self._fail(str(exc))
            except Exception as exc:
                self._fail(f"{type(exc).__name__}: {exc}")
            finally:
                self._set_busy(False, None)
                if then is not None:
                    then()

        self._worker = threading.Thread(target=work, name=f"nbdeploy-panel-{title}", daemon=True)
        self._worker.start()

    def _set_busy(self, busy: bool, title: str | None) -> None:
        self._busy = busy
        for button in self.action_buttons:
            button.disabled = busy
        if busy:
            self.progress.value = 0.0
            self.progress.bar_style = "info"
            self.status.value = f"{title}..."
        elif self.last_error is None:
            self.progress.bar_style = "success"

    def _log(self, line: str, *, link: str | None = None, error: bool = False) -> None:
        """Append one line; called from the worker thread too, hence the lock."""
        if link is not None:
            rendered = f"<a href='{esc(link)}' target='_blank'>{esc(line)}</a>"
        elif error:
            rendered = f"<span style='color:#cf222e'>{esc(line)}</span>"
        else:
            rendered = esc(line)
        with self._log_lock:
            self.log_lines.append(line)
            self._log_html.append(rendered.rstrip("\n"))
            self.log_view.value = log_html(self._log_html[-MAX_LOG_LINES:])

    def _fail(self, message: str) -> None:
        self.last_error = message
        self.progress.bar_style = "danger"
        self.status.value = "failed"
        self._log(f"error: {message}", error=True)

    def _progress(self, event: ProgressEvent) -> None:
        """The ``progress=`` callback of the core calls: log the step, move the bar."""
        self._log(str(event))
        self.progress.value = max(self.progress.value, event.fraction)

    def _step(self, stage: Stage, message: str) -> None:
        """A step the panel itself takes (export, quantize, benchmark), shown like the core's."""
        self._progress(ProgressEvent(stage, message))

    def _show(self, *objects: Any) -> None:
        self.results.outputs = tuple(_bundle(obj) for obj in objects)

    def _ensure_export(self, variable: str, model: Any, sample: Any) -> Any:
        if self.artifact is None:
            self._step("export", "converting to ONNX and checking parity")
            self.artifact = api.export(model, sample, name=self._name(variable, model))
            parity = self.artifact.parity or "no parity check: ONNX input"
            size = _format.size(self.artifact.size_bytes)
            self._step("export", f"{self.artifact.label}, {size}, parity {parity}")
        return self.artifact

    def _export(self, variable: str, model: Any, sample: Any) -> None:
        self._forget_exports()
        artifact = self._ensure_export(variable, model, sample)
        self._show(_VariantsView(variant_rows([artifact])))

    def _quantize(self, variable: str, model: Any, sample: Any) -> None:
        artifact = self._ensure_export(variable, model, sample)
        mode = self.quantize_picker.value
        modes = AUTO_CANDIDATES if mode in ("none", "auto") else (mode,)
        self._step("quantize", ", ".join(modes))
        self.variants = api.quantize(artifact, modes, calibration=sample)
        for variant in self.variants:
            state = "ok" if variant.ok else f"not usable: {variant.quantization.reason}"
            self._log(f"quantize: {variant.variant} {_format.size(variant.size_bytes)}, {state}")
        self._show(_VariantsView(variant_rows([artifact, *self.variants], self.report)))

    def _benchmark(self, variable: str, model: Any, sample: Any) -> None:
        if sample is None:
            raise NbdeployError("benchmark needs a sample: pick an array or type an expression")
        artifact = self._ensure_export(variable, model, sample)
        self._step("benchmark", "measuring every variant at batch sizes 1 and 8")
        self.report = api.benchmark(
            [artifact, *self.variants],
            sample,
            batch_sizes=(1, 8),
            time_budget_s=self.bench_seconds,
        )
        best = self.report.best()
        self._log(f"benchmark: fastest at batch 1: {best or 'n/a'}")
        self._show(
            _VariantsView(variant_rows([artifact, *self.variants], self.report)),
            BenchmarkView(self.report),
        )

    def _deploy(self, variable: str, model: Any, sample: Any) -> None:
        quantize = self.quantize_picker.value
        steps: list[ProgressEvent] = []

        def progress(event: ProgressEvent) -> None:
            if not event.detail:
                steps.append(event)
            self._progress(event)

        self.endpoint = api.deploy(
            self.artifact if self.artifact is not None else model,
            sample,
            name=self._name(variable, model),
            quantize=None if quantize == "none" else quantize,
            runtime=self.runtime_picker.value,
            auth=self.auth_box.value,
            progress=progress,
        )
        self._log(f"deployed {self.endpoint.name} v{self.endpoint.version}: {self.endpoint.url}")
        self.refresh()
        self.summary = deploy_summary(
            self.endpoint,
            model,
            sample,
            progress=progress,
            steps=steps,
            bench=self.bench_box.value,
            demo=self.demo_box.value,
            bench_seconds=self.bench_seconds,
            report=self.report,
        )
        self._show(self.summary)
