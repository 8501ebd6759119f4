import { MainAreaWidget, ToolbarButton } from '@jupyterlab/apputils';
import { refreshIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import {
  fetchDrift,
  fetchStats,
  IDriftReport,
  IStatsReport,
  IVersionStats
} from './api';
import { ILine, lineChart, Point, spanOf, versionLines } from './charts';
import { element, ms } from './dom';

/**
 * Seconds between reloads of the charts, and of the drift report (which moves slowly: its
 * live window is the last thousand rows).
 */
const REFRESH_SECONDS = 2;
const DRIFT_SECONDS = 10;
const WINDOW_SECONDS = 60;
/**
 * The short window behind the p50, batch-size and queue lines: the stats series carries the
 * request rate, p99 and errors per step, so those three are sampled here on every reload.
 */
const RECENT_SECONDS = 5;
const MAX_FEATURES = 8;

type RecentKey = 'p50_ms' | 'batch_size' | 'queue_ms';

function share(value: number | null, digits = 0): string {
  return value === null ? '-' : `${(value * 100).toFixed(digits)}%`;
}

type Step = Record<string, Record<string, number | null> | number>;

/**
 * Whether the series' steps carry `key` per version (else only the window's totals have it).
 */
function stepsCarry(report: IStatsReport, key: RecentKey): boolean {
  const steps = report.series as unknown as Step[];
  return steps.length > 0 && typeof steps[0][key] === 'object';
}

/**
 * Live charts of one deployment in the main area: request rate, error rate, p50/p99 latency,
 * batch size and queue time (a line per version), a table of the window's numbers, and the
 * drift of its inputs and outputs. It polls only while shown.
 */
export class MonitorView extends Widget {
  constructor(readonly deployment: string) {
    super();
    this.addClass('nbdeploy-MonitorView');
    this._summary = element('div', 'nbdeploy-monitor-summary');
    this._error = element('div', 'nbdeploy-error');
    this._drift = element('div', 'nbdeploy-monitor-drift');
    this._charts = element('div', 'nbdeploy-monitor-charts');
    this._table = element('table', 'nbdeploy-monitor-table');
    this.node.append(
      element('h2', 'nbdeploy-monitor-title', `Monitor: ${deployment}`),
      this._summary,
      this._error,
      this._drift,
      this._charts,
      this._table
    );
    this._poll = new Poll({
      name: `nbdeploy:monitor:${deployment}`,
      factory: () => this._load(),
      frequency: {
        interval: REFRESH_SECONDS * 1000,
        backoff: true,
        max: 30 * 1000
      },
      standby: () => !this.isVisible || 'when-hidden'
    });
  }

  /**
   * Reload now; resolves once the charts are redrawn.
   */
  async refresh(): Promise<void> {
    if (this._poll.isDisposed) {
      return;
    }
    this._driftAt = 0;
    await this._poll.refresh();
    await this._poll.tick.catch(() => undefined);
  }

  dispose(): void {
    this._poll.dispose();
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    void this.refresh();
  }

  private async _load(): Promise<void> {
    let report: IStatsReport;
    try {
      report = await fetchStats(this.deployment, WINDOW_SECONDS);
    } catch (error) {
      this._error.textContent = `Cannot read the numbers of ${this.deployment}: ${(error as Error).message}`;
      throw error;
    }
    this._error.textContent = '';
    const now = Date.now() / 1000;
    if (!stepsCarry(report, 'p50_ms')) {
      try {
        const recent = await fetchStats(this.deployment, RECENT_SECONDS);
        const rows = new Map(recent.versions.map(v => [v.version, v]));
        this._recent.push([now, rows]);
        this._recent = this._recent.filter(([t]) => t >= now - WINDOW_SECONDS);
      } catch {
        // the window's numbers are drawn all the same
      }
    }
    if (now - this._driftAt >= DRIFT_SECONDS) {
      this._driftAt = now;
      try {
        this._drawDrift(await fetchDrift(this.deployment), null);
      } catch (error) {
        this._drawDrift(null, (error as Error).message);
      }
    }
    this._draw(report);
  }

  /**
   * One line per version of `key`: from the report's series when its steps carry it, else
   * from the short-window numbers sampled on each reload.
   */
  private _recentLines(
    report: IStatsReport,
    key: RecentKey,
    suffix = ''
  ): ILine[] {
    const steps = report.series as unknown as Step[];
    if (stepsCarry(report, key)) {
      return report.versions.map(({ version }) => ({
        label: `v${version}${suffix}`,
        points: steps.map(
          step =>
            [
              step.t as number,
              (step[key] as Record<string, number | null>)[String(version)] ??
                null
            ] as Point
        )
      }));
    }
    return report.versions.map(({ version }) => ({
      label: `v${version}${suffix}`,
      points: this._recent.map(
        ([t, rows]) => [t, rows.get(version)?.[key] ?? null] as Point
      )
    }));
  }

  private _draw(report: IStatsReport): void {
    const total = report.total;
    this._summary.textContent =
      `${total.request_rate.toFixed(1)} req/s · p50 ${ms(total.p50_ms, '-')} ms · ` +
      `p99 ${ms(total.p99_ms, '-')} ms · ${share(total.error_rate, 1)} errors over the last ` +
      `${Math.round(report.window_s)} s · updated ${new Date().toLocaleTimeString()}`;
    this._summary.dataset.rate = String(total.request_rate);
    const span = spanOf(report, WINDOW_SECONDS);
    const recentSpan: [number, number] = [
      Date.now() / 1000 - WINDOW_SECONDS,
      Date.now() / 1000
    ];
    const latency = [
      ...versionLines(report, 'p99_ms').map(line => ({
        ...line,
        label: `${line.label} p99`
      })),
      ...this._recentLines(report, 'p50_ms', ' p50').map(line => ({
        ...line,
        dashed: true
      }))
    ];
    this._charts.replaceChildren(
      lineChart({
        title: 'requests / s',
        metric: 'request_rate',
        lines: versionLines(report, 'request_rate'),
        span
      }),
      lineChart({
        title: 'errors %',
        metric: 'error_rate',
        lines: versionLines(report, 'error_rate', 100),
        span,
        unit: '%'
      }),
      lineChart({
        title: 'latency ms (p99, p50 dashed)',
        metric: 'latency',
        lines: latency,
        span: recentSpan
      }),
      lineChart({
        title: 'batch size (rows / run)',
        metric: 'batch_size',
        lines: this._recentLines(report, 'batch_size'),
        span: recentSpan
      }),
      lineChart({
        title: 'queue ms',
        metric: 'queue_ms',
        lines: this._recentLines(report, 'queue_ms'),
        span: recentSpan
      })
    );
    this._drawTable(report);
  }

  private _drawTable(report: IStatsReport): void {
    const head = element('tr', '');
    for (const title of [
      '',
      'req/s',
      'errors',
      'p50 ms',
      'p95 ms',
      'p99 ms',
      'batch',
      'queue ms',
      'share'
    ]) {
      head.append(element('th', '', title));
    }
    const rows = [report.total, ...report.versions].map(
      (row: IVersionStats) => {
        const line = element('tr', '');
        line.dataset.version =
          row === report.total ? 'all' : String(row.version);
        for (const cell of [
          row === report.total ? 'all' : `v${row.version}`,
          row.request_rate.toFixed(2),
          share(row.error_rate, 1),
          ms(row.p50_ms, '-'),
          ms(row.p95_ms, '-'),
          ms(row.p99_ms, '-'),
          row.batch_size === null ? '-' : row.batch_size.toFixed(2),
          ms(row.queue_ms, '-'),
          share(row.share)
        ]) {
          line.append(element('td', '', cell));
        }
        return line;
      }
    );
    this._table.replaceChildren(head, ...rows);
  }

  private _drawDrift(report: IDriftReport | null, error: string | null): void {
    if (report === null) {
      this._drift.replaceChildren(
        element('div', 'nbdeploy-meta', `Drift: ${error ?? 'not read'}`)
      );
      return;
    }
    const worst = report.features.find(f => f.psi !== null);
    const parts: HTMLElement[] = [];
    if (worst && worst.flag === 'drift') {
      parts.push(
        element(
          'div',
          'nbdeploy-drift',
          `Drift: ${worst.feature} PSI ${worst.psi!.toFixed(2)}`
        )
      );
    }
    parts.push(element('div', 'nbdeploy-meta', report.summary));
    const table = element('table', 'nbdeploy-monitor-table');
    const head = element('tr', '');
    for (const title of ['feature', 'kind', 'PSI', '', 'flag']) {
      head.append(element('th', '', title));
    }
    table.append(head);
    for (const feature of report.features.slice(0, MAX_FEATURES)) {
      const line = element(
        'tr',
        `nbdeploy-flag-${feature.flag.replace(' ', '-')}`
      );
      const bar = element('span', 'nbdeploy-psi-bar');
      bar.style.width = `${Math.min(100, 200 * (feature.psi ?? 0))}px`;
      const barCell = element('td', '');
      barCell.append(bar);
      line.append(
        element('td', '', feature.feature),
        element('td', '', feature.kind),
        element('td', '', feature.psi === null ? '-' : feature.psi.toFixed(3)),
        barCell,
        element('td', 'nbdeploy-flag', feature.flag)
      );
      table.append(line);
    }
    parts.push(table);
    this._drift.replaceChildren(...parts);
  }

  private readonly _charts: HTMLDivElement;
  private readonly _drift: HTMLDivElement;
  private _driftAt = 0;
  private readonly _error: HTMLDivElement;
  private readonly _poll: Poll;
  private _recent: Array<[number, Map<number, IVersionStats>]> = [];
  private readonly _summary: HTMLDivElement;
  private readonly _table: HTMLTableElement;
}

export function createMonitorPanel(
  deployment: string
): MainAreaWidget<MonitorView> {
  const content = new MonitorView(deployment);
  const panel = new MainAreaWidget({ content });
  panel.id = `nbdeploy-monitor-${deployment}`;
  panel.title.label = `Monitor: ${deployment}`;
  panel.title.closable = true;
  panel.toolbar.addItem(
    'refresh',
    new ToolbarButton({
      icon: refreshIcon,
      tooltip: 'Reload the numbers now',
      onClick: () => void content.refresh()
    })
  );
  return panel;
}
