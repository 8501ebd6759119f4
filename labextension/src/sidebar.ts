import {
  Clipboard,
  Dialog,
  showDialog,
  showErrorMessage
} from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { IDeployment, jupyterURL, startDemo, stopDeployment } from './api';
import { DeploymentsModel } from './model';

const STATUS_CLASSES: Record<string, string> = {
  running: 'nbdeploy-status-ok',
  starting: 'nbdeploy-status-busy',
  restarting: 'nbdeploy-status-busy'
};

/**
 * What the panel asks its host to do: open a logs tab, insert the deploy panel cell.
 */
export interface IDeploymentsActions {
  openLogs(name: string): void;
  insertDeployPanel(): void;
}

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
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
function ms(value: number | null): string {
  if (value === null || value === undefined || !Number.isFinite(value)) {
    return '';
  }
  if (value >= 100) {
    return value.toFixed(0);
  }
  if (value >= 10) {
    return value.toFixed(1);
  }
  return value >= 1 ? value.toFixed(2) : value.toFixed(3);
}

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
      element('span', 'nbdeploy-meta', `${row.runtime} · ${row.format}`),
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
    actions.append(
      demo,
      button('Stop', 'stop', () => void this._stop(row.name, row.owner)),
      button('Logs', 'logs', () => this._actions.openLogs(row.name))
    );

    item.append(heading, address, direct, actions);
    return item;
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

  private readonly _error: HTMLDivElement;
  private readonly _list: HTMLUListElement;
}
