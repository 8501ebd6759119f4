import {
  Clipboard,
  Dialog,
  showDialog,
  showErrorMessage
} from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import {
  IDeployment,
  IVersionView,
  jupyterURL,
  startDemo,
  stopDeployment
} from './api';
import { spanOf, sparkline, totalRate, worstP99, lastValue } from './charts';
import { DeploymentsModel, SPARKLINE_WINDOW_SECONDS } from './model';
import { element, ms } from './dom';

const STATUS_CLASSES: Record<string, string> = {
  running: 'nbdeploy-status-ok',
  starting: 'nbdeploy-status-busy',
  restarting: 'nbdeploy-status-busy'
};

/**
 * What the panel asks its host to do: open a logs or monitor tab, insert the deploy panel cell.
 */
export interface IDeploymentsActions {
  openLogs(name: string): void;
  openMonitor(name: string): void;
  insertDeployPanel(): void;
}

function button(
  label: string,
  action: string,
  onClick: () => void
): HTMLButtonElement {
  const node = element('button', 'jp-Button nbdeploy-button', label);
  node.type = 'button';
  node.dataset.action = action;
  node.addEventListener('click', onClick);
  return node;
}

const STATUS_REASONS: Record<string, string> = {
  starting: 'starting: the server is loading the model',
  restarting:
    'restarting: the server stopped and is being started again; see Logs',
  exited: 'exited: the server process is gone; see Logs',
  missing: 'missing: no server is found for this deployment; see Logs'
};

/**
 * The status dot's tooltip: the status, and why when the endpoint is not answering.
 */
export function statusReason(row: IDeployment): string {
  if (row.status === 'running') {
    return `running: the endpoint answers at ${row.url}`;
  }
  return STATUS_REASONS[row.status] ?? `${row.status}: see Logs`;
}

const EMPTY_STATE_MAGIC = '%deploy model --sample x[:8] --name my-model';

/**
 * Milliseconds as nbdeploy's Python side prints them (`nbdeploy._format.ms`).
 */
/**
 * The latency a row shows, and where it was measured: over HTTP on this endpoint, in-process
 * only (said so), or nothing measured yet (never a made-up 0.00 ms).
 */
function latency(row: IDeployment): { text: string; title: string } {
  if (row.latency_source === 'endpoint' && row.p50_ms !== null) {
    const p99 = row.p99_ms !== null ? ` · p99 ${ms(row.p99_ms)} ms` : '';
    return {
      text: `p50 ${ms(row.p50_ms)} ms${p99}`,
      title: 'measured over HTTP on this endpoint'
    };
  }
  if (row.latency_source === 'in-process' && row.p50_ms !== null) {
    return {
      text: `p50 ${ms(row.p50_ms)} ms (in-process)`,
      title:
        'measured in-process with onnxruntime, not over HTTP; run %deploy --bench or ' +
        'nbd.benchmark(ep) to measure the endpoint'
    };
  }
  return {
    text: 'no latency measured',
    title: 'run nbd.benchmark(ep) to measure it'
  };
}

/**
 * A share of compared rows as a percentage: whole percents, with one decimal between 99 and
 * 100 so that 99.6 % agreement does not read as 100 %.
 */
function percent(share: number): string {
  const tenths = Math.floor(share * 1000 + 1e-6);
  if (tenths > 990 && tenths < 1000) {
    return `${(tenths / 10).toFixed(1)}%`;
  }
  return `${Math.round(share * 100)}%`;
}

const ROLE_REASONS: Record<string, string> = {
  stable: 'stable: takes the traffic back when a candidate is rolled back',
  canary: 'canary: answers its share of the unversioned requests',
  shadow:
    'shadow: gets a mirrored copy of every request; its answers are compared, not returned',
  idle: 'idle: loaded, takes no traffic'
};

/**
 * One version's line: "v2 · canary · 10% · 57 req · 0 err · agree 98%" (live numbers only
 * when the server gave them).
 */
export function versionSummary(version: IVersionView): string {
  const parts = [`v${version.version}`, version.role, `${version.weight}%`];
  if (version.requests !== null) {
    parts.push(`${version.requests} req`);
  }
  if (version.errors !== null) {
    parts.push(`${version.errors} err`);
  }
  if (version.agreement !== null) {
    parts.push(`agree ${percent(version.agreement)}`);
  }
  return parts.join(' · ');
}

/**
 * The version line's tooltip: what its role means and its live latency.
 */
function versionDetails(version: IVersionView, stable: number): string {
  const lines = [ROLE_REASONS[version.role] ?? version.role];
  if (version.requests === null) {
    lines.push('no live numbers: the server did not answer');
  } else if (version.p50_ms !== null) {
    const p99 = version.p99_ms !== null ? `, p99 ${ms(version.p99_ms)} ms` : '';
    lines.push(`p50 ${ms(version.p50_ms)} ms${p99} over the server's window`);
  }
  if (version.agreement !== null) {
    lines.push(
      `answers like v${stable} on ${percent(version.agreement)} of the compared rows`
    );
  }
  return lines.join('\n');
}

/**
 * The weight as a small bar, exposed as a meter from 0 to 100 %.
 */
function weightBar(version: IVersionView, name: string): HTMLElement {
  const bar = element('div', 'nbdeploy-weight');
  bar.setAttribute('role', 'meter');
  bar.setAttribute('aria-label', `Traffic to v${version.version} of ${name}`);
  bar.setAttribute('aria-valuemin', '0');
  bar.setAttribute('aria-valuemax', '100');
  bar.setAttribute('aria-valuenow', String(version.weight));
  bar.setAttribute('aria-valuetext', `${version.weight}%`);
  bar.title = `${version.weight}% of the unversioned requests`;
  const fill = element('div', 'nbdeploy-weight-fill');
  fill.style.width = `${Math.max(0, Math.min(100, version.weight))}%`;
  bar.appendChild(fill);
  return bar;
}

/**
 * The version the server falls back to: the one whose role is stable, else the row's.
 */
function stableVersion(row: IDeployment): number {
  return (
    (row.versions ?? []).find(v => v.role === 'stable')?.version ?? row.version
  );
}

/**
 * The loaded versions that are not the stable one (canaries, shadows, idle after a guard).
 */
function candidates(row: IDeployment): IVersionView[] {
  const stable = stableVersion(row);
  return (row.versions ?? []).filter(v => v.version !== stable);
}

function copyButton(text: string, action: string): HTMLButtonElement {
  const copy = button('Copy', action, () => {
    Clipboard.copyToSystem(text);
    copy.textContent = 'Copied';
    window.setTimeout(() => (copy.textContent = 'Copy'), 1500);
  });
  copy.title = `Copy ${text}`;
  return copy;
}

/**
 * The left-sidebar list of deployments, drawn from a DeploymentsModel only: it re-renders on
 * `model.changed` and tells the model when it is shown, so the model polls only while it is.
 */
export class DeploymentsPanel extends Widget {
  constructor(
    readonly model: DeploymentsModel,
    private readonly _actions: IDeploymentsActions
  ) {
    super();
    this.id = 'nbdeploy-deployments';
    this.addClass('nbdeploy-DeploymentsPanel');
    this.title.caption = 'Deployments';

    const header = element('div', 'nbdeploy-header');
    header.appendChild(element('h2', 'nbdeploy-title', 'Deployments'));
    header.appendChild(button('Refresh', 'refresh', () => void this.refresh()));
    this._error = element('div', 'nbdeploy-error');
    this._list = element('ul', 'nbdeploy-list');
    this.node.append(header, this._error, this._list);

    model.changed.connect(this._render, this);
    model.statsChanged.connect(this._drawStats, this);
    this._render();
  }

  /**
   * Reload the list now; resolves once the model has the answer.
   */
  refresh(): Promise<void> {
    return this.model.refresh();
  }

  protected onAfterShow(msg: Message): void {
    this.model.visible = true;
  }

  protected onAfterHide(msg: Message): void {
    this.model.visible = false;
  }

  private _render(): void {
    const { deployments, error, loaded } = this.model;
    this._error.textContent = error ?? '';
    this._list.replaceChildren();
    this._live.clear();
    if (!loaded) {
      return;
    }
    if (deployments.length === 0) {
      this._list.appendChild(this._emptyState());
      return;
    }
    for (const row of deployments) {
      this._list.appendChild(this._row(row));
    }
    this._drawStats();
  }

  /**
   * Each running row's request-rate and p99 sparklines over the last minute, redrawn in
   * place (the rows and their buttons stay) whenever the model has read new numbers.
   */
  private _drawStats(): void {
    for (const [name, live] of this._live) {
      const report = this.model.stats(name);
      if (report === null) {
        live.replaceChildren();
        live.title = '';
        continue;
      }
      const span = spanOf(report, SPARKLINE_WINDOW_SECONDS);
      const rate = totalRate(report);
      const p99 = worstP99(report);
      const rateNow = lastValue(rate);
      const p99Now = lastValue(p99);
      const rateText = element(
        'span',
        'nbdeploy-meta nbdeploy-spark-value',
        `${rateNow === null ? '0' : rateNow.toFixed(1)} req/s`
      );
      const p99Text = element(
        'span',
        'nbdeploy-meta nbdeploy-spark-value',
        p99Now === null ? 'p99 -' : `p99 ${ms(p99Now)} ms`
      );
      live.replaceChildren(
        sparkline('request_rate', rate, span),
        rateText,
        sparkline('p99_ms', p99, span),
        p99Text
      );
      live.title =
        `Over the last ${Math.round(report.window_s)} s: ` +
        `${report.total.request_rate.toFixed(2)} requests/s, p99 ` +
        `${report.total.p99_ms === null ? '-' : ms(report.total.p99_ms) + ' ms'}`;
    }
  }

  private _emptyState(): HTMLElement {
    const item = element('li', 'nbdeploy-empty');
    const magic = element('div', 'nbdeploy-url');
    const line = element(
      'code',
      'nbdeploy-snippet nbdeploy-magic',
      EMPTY_STATE_MAGIC
    );
    const copy = copyButton(EMPTY_STATE_MAGIC, 'copy-magic');
    magic.append(line, copy);
    item.append(
      element(
        'p',
        '',
        'No deployments yet. In a notebook, after %load_ext nbdeploy:'
      ),
      magic,
      element('p', '', 'or from Python:'),
      element(
        'pre',
        'nbdeploy-snippet',
        'import nbdeploy as nbd\nnbd.deploy(model, x[:8], name="my-model")'
      ),
      element('p', '', 'or from a form in the notebook:'),
      button('Insert deploy panel', 'insert-panel', () =>
        this._actions.insertDeployPanel()
      )
    );
    return item;
  }

  private _row(row: IDeployment): HTMLElement {
    const item = element('li', 'nbdeploy-row');
    item.dataset.name = row.name;
    item.dataset.status = row.status;

    const heading = element('div', 'nbdeploy-row-heading');
    const dot = element(
      'span',
      `nbdeploy-status ${STATUS_CLASSES[row.status] ?? 'nbdeploy-status-down'}`
    );
    dot.title = statusReason(row);
    const name = element('span', 'nbdeploy-name', row.name);
    name.title = `${row.name} v${row.version}, ${row.state}, deployed ${row.created_at}`;
    const measured = latency(row);
    const p50 = element('span', 'nbdeploy-meta nbdeploy-p50', measured.text);
    p50.title = measured.title;
    heading.append(
      dot,
      name,
      element('span', 'nbdeploy-meta', `v${row.version}`),
      element(
        'span',
        'nbdeploy-meta',
        `${row.runtime}${row.network ? ` (${row.network} network)` : ''} · ${row.format}`
      ),
      p50
    );

    const proxied = jupyterURL(row.proxy_path);
    const address = element('div', 'nbdeploy-url');
    const url = element('code', 'nbdeploy-url-text', proxied);
    url.title = `Through Jupyter (log in with your Jupyter token): ${proxied}`;
    address.append(url, copyButton(proxied, 'copy-url'));
    const direct = element('div', 'nbdeploy-url nbdeploy-url-secondary');
    const directText = element('code', 'nbdeploy-url-direct', row.url);
    directText.title = `Direct, on the Jupyter server's machine: ${row.infer_url}`;
    direct.append(
      element('span', 'nbdeploy-meta', 'direct'),
      directText,
      copyButton(row.url, 'copy-direct-url')
    );

    const actions = element('div', 'nbdeploy-actions');
    const running = row.status === 'running';
    const demo = button(
      'Open demo',
      'open-demo',
      () => void this._openDemo(row.name, demo)
    );
    demo.disabled = !running;
    demo.title = running
      ? 'Open the demo page in a new tab (starts its server when none runs)'
      : `${row.name} is not running: ${statusReason(row)}`;
    actions.append(demo);
    const back = this._rollbackButton(row);
    if (back) {
      actions.append(back);
    }
    actions.append(
      button('Stop', 'stop', () => void this._stop(row.name, row.owner)),
      button('Logs', 'logs', () => this._actions.openLogs(row.name)),
      button('Monitor', 'monitor', () => this._actions.openMonitor(row.name))
    );

    item.append(heading, address, direct);
    const live = element('div', 'nbdeploy-spark');
    live.setAttribute('aria-label', `Live traffic of ${row.name}`);
    this._live.set(row.name, live);
    item.append(live);
    if (row.drift) {
      const drift = element('div', 'nbdeploy-drift', `Drift: ${row.drift}`);
      drift.title =
        `The live inputs or outputs of ${row.name} v${stableVersion(row)} moved away from ` +
        'the data it was deployed with (population stability index); open Monitor for details';
      item.append(drift);
    }
    if (row.guard) {
      const guard = element(
        'div',
        'nbdeploy-guard',
        `Guard tripped: ${row.guard}`
      );
      guard.title =
        `A guard sent all traffic of ${row.name} back to v${stableVersion(row)}; ` +
        'this stays shown until the next deploy or promote';
      item.append(guard);
    }
    if ((row.versions ?? []).length > 0) {
      item.append(this._versions(row));
    }
    item.append(actions);
    if (this.model.isBusy(row.name)) {
      item.setAttribute('aria-busy', 'true');
    }
    return item;
  }

  /**
   * The name's versions, stable first: role, weight (with a bar), live counts, and the
   * Promote / Stop version buttons of the versions that are not stable.
   */
  private _versions(row: IDeployment): HTMLElement {
    const stable = stableVersion(row);
    const busy = this.model.isBusy(row.name);
    const list = element('ul', 'nbdeploy-versions');
    list.setAttribute('aria-label', `Versions of ${row.name}`);
    for (const version of row.versions) {
      const line = element('li', 'nbdeploy-version');
      line.dataset.version = String(version.version);
      line.dataset.role = version.role;
      const summary = element(
        'span',
        'nbdeploy-version-summary',
        versionSummary(version)
      );
      summary.title = versionDetails(version, stable);
      line.append(summary, weightBar(version, row.name));
      if (version.version !== stable) {
        const tools = element('span', 'nbdeploy-version-actions');
        if (version.role === 'canary' || version.role === 'shadow') {
          const up = button(
            'Promote',
            'promote',
            () => void this._promote(row.name, version.version)
          );
          up.setAttribute(
            'aria-label',
            `Promote v${version.version} of ${row.name}`
          );
          up.title = `Give v${version.version} all of ${row.name}'s traffic and make it the stable version`;
          up.disabled = busy;
          tools.append(up);
        }
        const stop = button(
          'Stop version',
          'stop-version',
          () => void this._stopVersion(row.name, version.version, stable)
        );
        stop.setAttribute(
          'aria-label',
          `Stop v${version.version} of ${row.name}`
        );
        stop.title = `Unload v${version.version}; its traffic goes to v${stable}`;
        stop.disabled = busy;
        tools.append(stop);
        line.append(tools);
      }
      list.append(line);
    }
    return list;
  }

  /**
   * Rollback, when there is something to roll back to: a candidate beside the stable version
   * (its traffic goes back to the stable one), or an earlier version than the one served.
   */
  private _rollbackButton(row: IDeployment): HTMLButtonElement | null {
    const others = candidates(row);
    if (others.length === 0 && row.version <= 1) {
      return null;
    }
    const back = button('Rollback', 'rollback', () => void this._rollback(row));
    back.setAttribute('aria-label', `Roll back ${row.name}`);
    back.title =
      others.length > 0
        ? `Send all traffic back to v${stableVersion(row)} and unload ${others
            .map(v => `v${v.version}`)
            .join(', ')}`
        : `Serve the version before v${row.version} instead`;
    back.disabled = this.model.isBusy(row.name);
    return back;
  }

  /**
   * Start the demo's server when none runs and open it through Jupyter. The tab is opened
   * before the request (a browser allows a pop-up only straight from the click).
   */
  private async _openDemo(
    name: string,
    demo: HTMLButtonElement
  ): Promise<void> {
    const tab = window.open('', '_blank');
    demo.disabled = true;
    demo.textContent = 'Starting demo…';
    try {
      const link = await startDemo(name);
      const target = jupyterURL(link.url);
      if (tab) {
        tab.opener = null;
        tab.location.href = target;
      } else {
        window.open(target, '_blank', 'noopener');
      }
    } catch (error) {
      tab?.close();
      await showErrorMessage(
        `Could not open the demo of ${name}`,
        error as Error
      );
    } finally {
      demo.disabled = false;
      demo.textContent = 'Open demo';
    }
  }

  private async _stop(name: string, owner: string): Promise<void> {
    const madeBy = owner ? ` It was deployed by ${owner}.` : '';
    const answer = await showDialog({
      title: `Stop ${name}?`,
      body: `The endpoint of ${name} stops answering; its versions stay registered.${madeBy}`,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Stop' })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await stopDeployment(name);
    } catch (error) {
      await showErrorMessage(`Could not stop ${name}`, error as Error);
    }
    await this.refresh();
  }

  private async _promote(name: string, version: number): Promise<void> {
    try {
      await this.model.promote(name, version);
    } catch (error) {
      await showErrorMessage(
        `Could not promote v${version} of ${name}`,
        error as Error
      );
    }
  }

  private async _rollback(row: IDeployment): Promise<void> {
    const others = candidates(row);
    const stable = stableVersion(row);
    const unloaded = others.map(v => `v${v.version}`).join(', ');
    const body =
      others.length > 0
        ? `All traffic of ${row.name} goes back to v${stable}; ${unloaded} ${
            others.length > 1
              ? 'are unloaded and stay'
              : 'is unloaded and stays'
          } registered.`
        : `${row.name} serves its previous registered version instead of v${row.version}, at the same URL.`;
    const answer = await showDialog({
      title: `Roll back ${row.name}?`,
      body,
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Rollback' })]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await this.model.rollback(row.name);
    } catch (error) {
      await showErrorMessage(`Could not roll back ${row.name}`, error as Error);
    }
  }

  private async _stopVersion(
    name: string,
    version: number,
    stable: number
  ): Promise<void> {
    const answer = await showDialog({
      title: `Stop v${version} of ${name}?`,
      body: `v${version} is unloaded and its share of traffic goes to v${stable}; it stays registered.`,
      buttons: [
        Dialog.cancelButton(),
        Dialog.warnButton({ label: 'Stop version' })
      ]
    });
    if (!answer.button.accept) {
      return;
    }
    try {
      await this.model.stopVersion(name, version);
    } catch (error) {
      await showErrorMessage(
        `Could not stop v${version} of ${name}`,
        error as Error
      );
    }
  }

  private readonly _error: HTMLDivElement;
  private readonly _live = new Map<string, HTMLDivElement>();
  private readonly _list: HTMLUListElement;
}
