// mlnb in JupyterLab: the sidebar panel and the notebook toolbar's "parameters of…".
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { LabIcon } from '@jupyterlab/ui-components';

import { MlnbPanel } from './panel';
import { ParametersButton } from './parameters';

const ICON = new LabIcon({
  name: 'mlnb:icon',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><g class="jp-icon3" fill="#616161">' +
    '<rect x="9" y="2" width="6" height="5" rx="1"/><rect x="2" y="16" width="6" height="5" rx="1"/>' +
    '<rect x="16" y="16" width="6" height="5" rx="1"/><path d="M11.3 7h1.4v4h6.3v5h-1.4v-3.6H6.4V16H5v-5h6.3z"/>' +
    '</g></svg>'
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'mlnb-lab:plugin',
  description: 'mlnb pipelines, runs and models in the left sidebar',
  autoStart: true,
  optional: [ILayoutRestorer],
  activate: (app: JupyterFrontEnd, restorer: ILayoutRestorer | null) => {
    const panel = new MlnbPanel(app);
    panel.title.icon = ICON;
    app.shell.add(panel, 'left', { rank: 850 });
    if (restorer) {
      restorer.add(panel, 'mlnb-panel');
    }
    app.docRegistry.addWidgetExtension('Notebook', new ParametersButton());
  }
};

export default plugin;
