// "parameters of…": run in a notebook's kernel the parameters a stage received, or would.
import { Dialog, Notification, showDialog, ToolbarButton } from '@jupyterlab/apputils';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import { INotebookModel, NotebookPanel } from '@jupyterlab/notebook';
import { DisposableDelegate, IDisposable } from '@lumino/disposable';
import { Widget } from '@lumino/widgets';

import { api, ParameterUse, Parameters } from './api';

interface Choice {
  pipeline: string;
  stage: string;
  run?: string;
  profile?: string;
}

/** A dialog body: one select of every (pipeline, stage) × (profile | recent run). */
class ChoiceBody extends Widget implements Dialog.IBodyWidget<Choice | null> {
  private readonly select: HTMLSelectElement;
  private readonly choices: Choice[] = [];

  constructor(uses: ParameterUse[]) {
    super();
    this.addClass('mlnb-parameters-dialog');
    this.select = document.createElement('select');
    this.select.className = 'mlnb-parameters-choice';
    for (const use of uses) {
      const group = document.createElement('optgroup');
      group.label = `${use.pipeline} · stage ${use.stage}`;
      const add = (label: string, choice: Choice) => {
        const option = document.createElement('option');
        option.textContent = label;
        option.value = String(this.choices.length);
        this.choices.push(choice);
        group.append(option);
      };
      for (const run of use.runs) {
        const at = new Date(run.started * 1000).toLocaleString();
        const profile = run.profile ? `, profile ${run.profile}` : '';
        add(`run ${run.run_id.slice(0, 8)} (${run.status}, ${at}${profile})`, {
          pipeline: use.pipeline,
          stage: use.stage,
          run: run.run_id
        });
      }
      add('no profile (the spec as written)', { pipeline: use.pipeline, stage: use.stage });
      for (const profile of use.profiles) {
        add(`profile ${profile}`, { pipeline: use.pipeline, stage: use.stage, profile });
      }
      this.select.append(group);
    }
    const text = document.createElement('p');
    text.textContent =
      'Runs the parameters that stage received (or would receive) in this kernel, ' +
      'exactly as papermill injects them. The notebook file is not changed.';
    this.node.append(text, this.select);
  }

  getValue(): Choice | null {
    return this.choices[Number(this.select.value)] || null;
  }
}

async function chooseAndRun(panel: NotebookPanel): Promise<void> {
  const path = panel.context.path;
  const found = await api<{ uses: ParameterUse[] }>(
    `parameters?notebook=${encodeURIComponent(path)}`
  );
  if (!found.uses.length) {
    Notification.warning(`${path} is the notebook of no stage in pipelines/`, { autoClose: 5000 });
    return;
  }
  const result = await showDialog({
    title: 'Parameters of…',
    body: new ChoiceBody(found.uses),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Run in kernel' })]
  });
  const choice = result.value;
  if (!result.button.accept || !choice) {
    return;
  }
  const query = new URLSearchParams({ notebook: path, pipeline: choice.pipeline, stage: choice.stage });
  if (choice.run) {
    query.set('run', choice.run);
  } else if (choice.profile) {
    query.set('profile', choice.profile);
  }
  const params = await api<Parameters>(`parameters?${query.toString()}`);
  await panel.sessionContext.ready;
  const kernel = panel.sessionContext.session?.kernel;
  if (!kernel) {
    throw new Error('the notebook has no kernel: start one, then try again');
  }
  const future = kernel.requestExecute({ code: params.source, store_history: true });
  const reply = await future.done;
  if (reply.content.status !== 'ok') {
    throw new Error(`the parameters cell failed in the kernel: ${reply.content.status}`);
  }
  const pre = document.createElement('pre');
  pre.className = 'mlnb-params-source';
  pre.textContent = params.source;
  const body = new Widget({ node: pre });
  await showDialog({
    title: `Parameters of ${params.stage} set in the kernel (${params.note})`,
    body,
    buttons: [Dialog.okButton()]
  });
}

export class ParametersButton
  implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel>
{
  createNew(panel: NotebookPanel): IDisposable {
    const button = new ToolbarButton({
      className: 'mlnb-parameters-button',
      label: 'parameters of…',
      tooltip: "Run a pipeline stage's parameters in this kernel (mlnb)",
      onClick: () => {
        chooseAndRun(panel).catch(e =>
          Notification.error(`mlnb: ${e.message}`, { autoClose: 8000 })
        );
      }
    });
    panel.toolbar.insertItem(10, 'mlnbParameters', button);
    return new DisposableDelegate(() => button.dispose());
  }
}
