"""Monitor: live charts of one deployment (request rate, errors, latency, batching, queueing,
one line per version) and its drift, as an ipywidgets widget; ``%monitor NAME`` shows one.

Only ipywidgets and inline SVG, so it works wherever widgets do: JupyterLab, Notebook, Voila.
Every ``every`` seconds a daemon thread calls ``nbdeploy.api.stats`` (and, less often,
``nbdeploy.api.drift``) and replaces the charts; the kernel stays free meanwhile.

When it refreshes:
- from creation until ``close()``; the thread holds the widget weakly and ends with it;
- not while ``paused`` (the pause button), nor once every view of it has been gone for
  ``pause_after`` seconds (the cell's output cleared, the notebook closed): the frontends
  count their views, and a view that shows up again resumes at once. A monitor never shown
  (a script, a notebook run by nbclient with no frontend) keeps refreshing until closed.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from typing import Any

import ipywidgets as widgets

from nbdeploy import _format, api
from nbdeploy._errors import InputError, NbdeployError
from nbdeploy.jupyter.render import esc, html_table, line_chart_svg

RECENT_S = 5.0
"""The short window behind the p50, batch-size and queue lines when the series lacks them."""
DRIFT_EVERY_S = 10.0
"""Drift changes slowly (its live window is the last thousand rows): read it this often."""
MAX_FEATURES = 5
SECTION_STYLE = "font-family:var(--jp-ui-font-family, sans-serif);font-size:90%;margin:2px 0"
FLAG_COLORS = {"drift": "#cf222e", "watch": "#9a6700", "ok": "#1a7f37", "no data": "#57606a"}


class Monitor(widgets.VBox):
    """Live charts of deployment ``name`` over the last ``window`` seconds, redrawn every
    ``every`` seconds; ``stats`` and ``drift`` hold the last reports read."""

    def __init__(
        self,
        name: str,
        window: float = 60.0,
        every: float = 3.0,
        *,
        pause_after: float = 30.0,
        autostart: bool = True,
        **kwargs: Any,
    ) -> None:
        if not 1 <= window <= 600:
            raise InputError(f"window must be from 1 to 600 seconds; got {window!r}")
        if every <= 0:
            raise InputError(f"every must be a positive number of seconds; got {every!r}")
        self.name = name
        self.window = float(window)
        self.every = float(every)
        self.pause_after = float(pause_after)
        self.stats: Any = None
        self.drift: Any = None
        self.drift_error: str | None = None
        self.error: str | None = None
        self.refreshes = 0
        self._recent: deque[tuple[float, dict[int, Any]]] = deque(maxlen=600)
        self._drift_read_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unseen_since: float | None = None
        self.header = widgets.HTML("")
        self.drift_view = widgets.HTML("")
        self.charts = widgets.HTML("")
        self.table = widgets.HTML("")
        self.pause_button = widgets.ToggleButton(
            value=False, description="pause", icon="pause", tooltip="stop refreshing for now"
        )
        self.refresh_button = widgets.Button(description="refresh", icon="refresh")
        for button in (self.pause_button, self.refresh_button):
            button.layout = widgets.Layout(width="auto")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.pause_button.observe(self._pause_changed, names="value")
        super().__init__(
            [
                widgets.HBox([self.header, self.pause_button, self.refresh_button]),
                self.drift_view,
                self.charts,
                self.table,
            ],
            **kwargs,
        )
        self.add_class("nbdeploy-monitor")
        self._view_count = 0
        self.observe(self._views_changed, names="_view_count")
        self.refresh()
        if autostart:
            self.start()

    @property
    def paused(self) -> bool:
        """Paused by the button, or because no view has shown the widget for a while."""
        if self.pause_button.value:
            return True
        unseen = self._unseen_since
        return unseen is not None and time.monotonic() - unseen >= self.pause_after

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Refresh every ``every`` seconds on a daemon thread until ``stop()`` or ``close()``."""
        if self.running:
            return
        stop = self._stop = threading.Event()
        ref = weakref.ref(self)
        every = self.every

        def tick() -> None:
            while not stop.wait(every):
                monitor = ref()
                if monitor is None or monitor.comm is None:
                    return
                if not monitor.paused:
                    try:
                        monitor.refresh()
                    except Exception:  # a widget torn down mid-refresh: stop quietly
                        return
                del monitor

        self._thread = threading.Thread(target=tick, name=f"nbdeploy-monitor-{self.name}")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        stop = getattr(self, "_stop", None)  # None when __init__ refused its arguments
        if stop is not None:
            stop.set()

    def close(self) -> None:
        self.stop()
        super().close()

    def refresh(self) -> None:
        """Read the numbers now and redraw; a failure is shown in the widget, not raised."""
        with self._lock:
            try:
                report = api.stats(self.name, self.window)
            except NbdeployError as exc:
                self.error = _format.first_line(exc, lines=3)
                self._draw_header()
                return
            self.error = None
            self.stats = report
            now = time.time()
            if not _series_has(report, "p50_ms"):
                self._read_recent(now)
            if now - self._drift_read_at >= DRIFT_EVERY_S:
                self._read_drift(now)
            self.refreshes += 1
            self._draw(now)

    def _read_recent(self, now: float) -> None:
        try:
            recent = api.stats(self.name, min(self.window, RECENT_S))
        except NbdeployError:
            return
        self._recent.append((now, {row.version: row for row in recent.versions}))
        while self._recent and self._recent[0][0] < now - self.window:
            self._recent.popleft()

    def _read_drift(self, now: float) -> None:
        self._drift_read_at = now
        try:
            self.drift, self.drift_error = api.drift(self.name), None
        except NbdeployError as exc:
            self.drift, self.drift_error = None, " ".join(str(exc).split())

    @property
    def drift_flag(self) -> str | None:
        """``input[20] PSI 0.41`` when the worst feature crossed the drift threshold (the rule
        ``nbdeploy ls`` and the lab sidebar use), else None."""
        worst = self.drift.worst if self.drift is not None else None
        if worst is None or worst.flag != "drift":
            return None
        return f"{worst.feature} PSI {worst.psi:.2f}"

    def _draw(self, now: float) -> None:
        self._draw_header()
        self.drift_view.value = self._drift_html()
        self.charts.value = self._charts_html(now)
        self.table.value = self._table_html()

    def _draw_header(self) -> None:
        report = self.stats
        parts = [f"<b>{esc(self.name)}</b>"]
        if report is not None:
            total = report.total
            parts.append(
                f"<span class='nbd-rate' data-rate='{total.request_rate:.4f}'>"
                f"{total.request_rate:.1f} req/s</span>"
            )
            if total.p99_ms is not None:
                parts.append(f"p99 {_format.ms(total.p99_ms)} ms")
            if total.error_rate is not None:
                color = "#cf222e" if total.error_rate else "inherit"
                parts.append(f"<span style='color:{color}'>{total.error_rate:.1%} errors</span>")
        parts.append(f"last {self.window:.0f} s, every {self.every:g} s")
        parts.append(time.strftime("%H:%M:%S"))
        if self.pause_button.value:
            parts.append("paused")
        elif self.paused:
            parts.append("paused: not shown")
        line = " &middot; ".join(parts)
        if self.error is not None:
            line += f"<div style='color:#cf222e'>{esc(self.error)}</div>"
        self.header.value = f"<div style='{SECTION_STYLE}'>{line}</div>"

    def _drift_html(self) -> str:
        if self.drift is None:
            note = esc(self.drift_error or "drift: not read yet")
            return f"<div class='nbd-drift' style='{SECTION_STYLE};color:#57606a'>{note}</div>"
        report = self.drift
        flag = self.drift_flag
        if flag is not None:
            head = (
                f"<b class='nbd-drift-flag' style='color:#cf222e'>&#9888; drift: {esc(flag)}</b>"
                f" &middot; {esc(report.summary())}"
            )
        else:
            head = esc(report.summary())
        rows = [
            f"<tr><td>{esc(f.feature)}</td><td>{esc(f.kind)}</td>"
            f"<td>{'-' if f.psi is None else f'{f.psi:.3f}'}</td>"
            f"<td><span style='display:inline-block;height:8px;width:"
            f"{min(100, 200 * (f.psi or 0.0)):.0f}px;background:{FLAG_COLORS.get(f.flag)}'>"
            f"</span></td><td style='color:{FLAG_COLORS.get(f.flag)}'>{esc(f.flag)}</td></tr>"
            for f in report.features[:MAX_FEATURES]
        ]
        table = (
            "<table style='font-size:90%'><tr><th>feature</th><th>kind</th><th>PSI</th>"
            f"<th></th><th>flag</th></tr>{''.join(rows)}</table>"
            if rows
            else ""
        )
        return f"<div class='nbd-drift' style='{SECTION_STYLE}'>{head}{table}</div>"

    def _charts_html(self, now: float) -> str:
        report = self.stats
        series = report.series
        versions = sorted({row.version for row in report.versions})
        span = (now - self.window, now)

        def lines(key: str, scale: float = 1.0) -> dict[str, list[tuple[float, float | None]]]:
            if _series_has(report, key):
                return {
                    f"v{v}": [(p.t, _scaled(getattr(p, key).get(v), scale)) for p in series]
                    for v in versions
                }
            return {
                f"v{v}": [
                    (t, _scaled(getattr(rows[v], key), scale) if v in rows else None)
                    for t, rows in self._recent
                ]
                for v in versions
            }

        latency = {f"{label} p99": line for label, line in lines("p99_ms").items()}
        latency.update({f"{label} p50": line for label, line in lines("p50_ms").items()})
        dashed = {label: "4,2" for label in latency if label.endswith("p50")}
        charts = [
            line_chart_svg("requests / s", lines("request_rate"), metric="request_rate", span=span),
            line_chart_svg(
                "errors %", lines("error_rate", 100.0), metric="error_rate", unit="%", span=span
            ),
            line_chart_svg(
                "latency ms (p99, p50 dashed)",
                latency,
                metric="latency",
                span=span,
                styles=dashed,
            ),
            line_chart_svg(
                "batch size (rows / run)", lines("batch_size"), metric="batch_size", span=span
            ),
            line_chart_svg("queue ms", lines("queue_ms"), metric="queue_ms", span=span),
        ]
        cells = "".join(f"<div style='margin:2px 6px 2px 0'>{chart}</div>" for chart in charts)
        return f"<div class='nbd-charts' style='display:flex;flex-wrap:wrap'>{cells}</div>"

    def _table_html(self) -> str:
        return html_table(*self.stats.table_rows())

    def _pause_changed(self, change: dict[str, Any]) -> None:
        self.pause_button.description = "resume" if change["new"] else "pause"
        self.pause_button.icon = "play" if change["new"] else "pause"
        if not change["new"]:
            self.refresh()
        else:
            self._draw_header()

    def _views_changed(self, change: dict[str, Any]) -> None:
        if change["new"]:
            was_paused = self.paused
            self._unseen_since = None
            if was_paused and self.running:
                threading.Thread(target=self.refresh, daemon=True).start()
        elif change["old"]:
            self._unseen_since = time.monotonic()

    def __repr__(self) -> str:
        summary = self.stats.summary() if self.stats is not None else self.error or "no data yet"
        return f"Monitor({self.name!r}: {summary})"


def _series_has(report: Any, key: str) -> bool:
    """Whether the report's series points carry ``key`` per version (the server's own
    per-second history), rather than only the window's totals."""
    return bool(report.series) and isinstance(getattr(report.series[0], key, None), dict)


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale
