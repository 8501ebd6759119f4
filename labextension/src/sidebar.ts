import {
  Clipboard,
  Dialog,
  showDialog,
  showErrorMessage
} from '@jupyterlab/apputils';
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { IDeployment, jupyterURL, stopDeployment } from './api';
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

function formatMs(value: number | null): string {
  if (value === null || value === undefined) {
    return 'p50 n/a';
  }
  return `p50 ${value < 10 ? value.toFixed(2) : value.toFixed(1)} ms`;
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
    item.append(
      element('p', '', 'No deployments yet. Deploy a model from a notebook:'),
      element(
        'pre',
        'nbdeploy-snippet',
        'import nbdeploy as nbd\nnbd.deploy(model, sample, name="my-model")'
      ),
      element('p', '', 'or with the magic:'),
      element(
        'pre',
        'nbdeploy-snippet',
        '%load_ext nbdeploy\n%deploy model --sample x --name my-model'
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
    dot.title = row.status;
    const name = element('span', 'nbdeploy-name', row.name);
    name.title = `${row.name} v${row.version}, ${row.state}, deployed ${row.created_at}`;
    heading.append(
      dot,
      name,
      element('span', 'nbdeploy-meta', `v${row.version}`),
      element('span', 'nbdeploy-meta', `${row.runtime} · ${row.format}`),
      element('span', 'nbdeploy-meta nbdeploy-p50', formatMs(row.p50_ms))
    );

    const address = element('div', 'nbdeploy-url');
    const url = element('code', 'nbdeploy-url-text', row.url);
    url.title = `Inference: ${row.infer_url}\nThrough Jupyter: ${jupyterURL(row.proxy_path)}`;
    const copy = button('Copy', 'copy-url', () => {
      Clipboard.copyToSystem(row.infer_url);
      copy.textContent = 'Copied';
      window.setTimeout(() => (copy.textContent = 'Copy'), 1500);
    });
    copy.title = `Copy ${row.infer_url}`;
    address.append(url, copy);

    const actions = element('div', 'nbdeploy-actions');
    const demo = button('Open demo', 'open-demo', () => {
      if (row.demo_url) {
        window.open(jupyterURL(row.demo_url), '_blank', 'noopener');
      }
    });
    demo.disabled = !row.demo_url;
    demo.title = row.demo_url
      ? 'Open the demo page in a new tab'
      : `No demo is running for ${row.name}: start one with nbdeploy demo ${row.name}`;
    actions.append(
      demo,
      button('Stop', 'stop', () => void this._stop(row.name)),
      button('Logs', 'logs', () => this._actions.openLogs(row.name))
    );

    item.append(heading, address, actions);
    return item;
  }

  private async _stop(name: string): Promise<void> {
    const answer = await showDialog({
      title: `Stop ${name}?`,
      body: `The endpoint of ${name} stops answering; its versions stay registered.`,
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
