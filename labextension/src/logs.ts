import { MainAreaWidget, ToolbarButton } from '@jupyterlab/apputils';
import { refreshIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { fetchLogs } from './api';

const TAIL_LINES = 500;

/**
 * The last lines a deployment's server wrote, in a main-area tab with a refresh button.
 */
export class LogsView extends Widget {
  constructor(readonly deployment: string) {
    super();
    this.addClass('nbdeploy-LogsView');
    this._text = document.createElement('pre');
    this._text.className = 'nbdeploy-logs';
    this.node.appendChild(this._text);
  }

  async refresh(): Promise<void> {
    try {
      const reply = await fetchLogs(this.deployment, TAIL_LINES);
      this._text.textContent = reply.logs || '(no log lines yet)';
      this.node.scrollTop = this.node.scrollHeight;
    } catch (error) {
      this._text.textContent = `Cannot read the logs of ${this.deployment}: ${(error as Error).message}`;
    }
  }

  private readonly _text: HTMLPreElement;
}

export function createLogsPanel(deployment: string): MainAreaWidget<LogsView> {
  const content = new LogsView(deployment);
  const panel = new MainAreaWidget({ content });
  panel.id = `nbdeploy-logs-${deployment}`;
  panel.title.label = `Logs: ${deployment}`;
  panel.title.closable = true;
  panel.toolbar.addItem(
    'refresh',
    new ToolbarButton({
      icon: refreshIcon,
      tooltip: 'Reload the logs',
      onClick: () => void content.refresh()
    })
  );
  void content.refresh();
  return panel;
}
