import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  InputDialog,
  MainAreaWidget,
  Notification
} from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';

import { createLogsPanel, LogsView } from './logs';
import { DEFAULT_REFRESH_SECONDS, DeploymentsModel } from './model';
import { createMonitorPanel, MonitorView } from './monitor';
import { DeploymentsPanel } from './sidebar';

const CATEGORY = 'nbdeploy';
const DEPLOY_PANEL_CODE = 'from nbdeploy import DeployPanel\nDeployPanel()';

namespace NotebookCommands {
  export const insertBelow = 'notebook:insert-cell-below';
  export const toCode = 'notebook:change-cell-to-code';
  export const replaceSelection = 'notebook:replace-selection';
}

namespace CommandIDs {
  export const show = 'nbdeploy:show-deployments';
  export const insertPanel = 'nbdeploy:insert-deploy-panel';
  export const openLogs = 'nbdeploy:open-logs';
  export const openMonitor = 'nbdeploy:open-monitor';
}

const deployIcon = new LabIcon({
  name: 'nbdeploy:deployments',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">' +
    '<path class="jp-icon3" fill="#616161" d="M4 3h16a1 1 0 0 1 1 1v5a1 1 0 0 1-1 ' +
    '1H4a1 1 0 0 1-1-1V4a1 1 0 0 1 1-1zm0 11h16a1 1 0 0 1 1 1v5a1 1 0 0 1-1 1H4a1 1 0 0 ' +
    '1-1-1v-5a1 1 0 0 1 1-1zm3-8.5a1 1 0 1 0 0 2 1 1 0 0 0 0-2zm0 11a1 1 0 1 0 0 2 1 1 0 ' +
    '0 0 0-2zM10 6h8v1h-8zm0 11h8v1h-8z"/></svg>'
});

/**
 * Add a cell with `from nbdeploy import DeployPanel; DeployPanel()` below the active cell of
 * the current notebook, through the notebook's own commands: they know which notebook is
 * current, and this extension then needs no build-time dependency on the notebook package.
 */
async function insertDeployPanel(commands: CommandRegistry): Promise<boolean> {
  if (!commands.isEnabled(NotebookCommands.insertBelow)) {
    Notification.warning(
      'Open a notebook first, then insert the deploy panel.',
      { autoClose: 5000 }
    );
    return false;
  }
  await commands.execute(NotebookCommands.insertBelow);
  await commands.execute(NotebookCommands.toCode);
  await commands.execute(NotebookCommands.replaceSelection, {
    text: DEPLOY_PANEL_CODE
  });
  return true;
}

/**
 * Apply the user's settings (schema/plugin.json) to the model, now and whenever they change.
 */
async function followSettings(
  registry: ISettingRegistry,
  pluginId: string,
  model: DeploymentsModel
): Promise<void> {
  const apply = (settings: ISettingRegistry.ISettings) => {
    const seconds = settings.get('refreshInterval').composite;
    model.refreshInterval =
      typeof seconds === 'number' ? seconds : DEFAULT_REFRESH_SECONDS;
  };
  try {
    const settings = await registry.load(pluginId);
    apply(settings);
    settings.changed.connect(apply);
  } catch (error) {
    console.warn(`nbdeploy: cannot read the settings of ${pluginId}`, error);
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nbdeploy:plugin',
  description:
    'A Deployments sidebar for nbdeploy endpoints, with commands to show it and to insert the deploy panel.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    settingRegistry: ISettingRegistry | null
  ) => {
    const { commands, shell } = app;
    const logPanels = new Map<string, MainAreaWidget<LogsView>>();
    const monitorPanels = new Map<string, MainAreaWidget<MonitorView>>();
    const model = new DeploymentsModel();
    const sidebar = new DeploymentsPanel(model, {
      openLogs: name => void commands.execute(CommandIDs.openLogs, { name }),
      openMonitor: name =>
        void commands.execute(CommandIDs.openMonitor, { name }),
      insertDeployPanel: () => void commands.execute(CommandIDs.insertPanel)
    });
    sidebar.disposed.connect(() => model.dispose());
    if (settingRegistry) {
      void followSettings(settingRegistry, plugin.id, model);
    }
    sidebar.title.icon = deployIcon;
    shell.add(sidebar, 'left', { rank: 900 });
    restorer?.add(sidebar, sidebar.id);

    commands.addCommand(CommandIDs.show, {
      label: 'nbdeploy: Show deployments',
      caption: 'Show the nbdeploy Deployments sidebar',
      execute: () => {
        shell.activateById(sidebar.id);
        return sidebar.refresh();
      }
    });

    commands.addCommand(CommandIDs.insertPanel, {
      label: 'nbdeploy: Insert deploy panel',
      caption: 'Add a cell that shows the nbdeploy DeployPanel widget',
      execute: () => insertDeployPanel(commands)
    });

    commands.addCommand(CommandIDs.openLogs, {
      label: args => `nbdeploy: Logs of ${args.name as string}`,
      execute: args => {
        const name = args.name as string;
        let panel = logPanels.get(name);
        if (panel && !panel.isDisposed) {
          void panel.content.refresh();
        } else {
          panel = createLogsPanel(name);
          logPanels.set(name, panel);
          shell.add(panel, 'main');
        }
        shell.activateById(panel.id);
      }
    });

    commands.addCommand(CommandIDs.openMonitor, {
      label: args =>
        args.name
          ? `nbdeploy: Monitor ${args.name as string}`
          : 'nbdeploy: Monitor a deployment',
      caption:
        'Live charts of a deployment: request rate, errors, latency, batching, drift',
      execute: async args => {
        let name = args.name as string | undefined;
        if (!name) {
          const names = model.deployments.map(row => row.name);
          if (names.length === 0) {
            Notification.warning('No deployment is running to monitor.', {
              autoClose: 5000
            });
            return;
          }
          const answer = await InputDialog.getItem({
            title: 'Monitor which deployment?',
            items: names
          });
          if (!answer.button.accept || !answer.value) {
            return;
          }
          name = answer.value;
        }
        let panel = monitorPanels.get(name);
        if (!panel || panel.isDisposed) {
          panel = createMonitorPanel(name);
          monitorPanels.set(name, panel);
          shell.add(panel, 'main');
        }
        shell.activateById(panel.id);
        await panel.content.refresh();
      }
    });

    palette?.addItem({ command: CommandIDs.show, category: CATEGORY });
    palette?.addItem({ command: CommandIDs.openMonitor, category: CATEGORY });
    palette?.addItem({ command: CommandIDs.insertPanel, category: CATEGORY });
  }
};

export default plugin;
