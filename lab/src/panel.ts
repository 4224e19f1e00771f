// The mlnb sidebar: pipelines as DAGs with a Run button, their recent runs, the models.
import { JupyterFrontEnd } from '@jupyterlab/application';
import { MainAreaWidget } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { IFrame } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import {
  api,
  ApiError,
  Launch,
  ModelStatus,
  notebookUrl,
  Pipeline,
  PipelineRun,
  StageState
} from './api';
import { drawDag } from './dag';

const POLL_MS = 1000;

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className = '',
  text = ''
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  if (className) {
    element.className = className;
  }
  if (text) {
    element.textContent = text;
  }
  return element;
}

function duration(seconds: number): string {
  if (seconds < 60) {
    return `${seconds.toFixed(1)} s`;
  }
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
}

function when(unixSeconds: number): string {
  return new Date(unixSeconds * 1000).toLocaleString();
}

/** `key=value` lines (a `#` starts a comment) as an object of overrides. */
export function parseOverrides(text: string): Record<string, string> {
  const found: Record<string, string> = {};
  text.split('\n').forEach((raw, index) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) {
      return;
    }
    const at = line.indexOf('=');
    if (at <= 0) {
      throw new Error(`line ${index + 1} of the parameters is not KEY=VALUE: ${line}`);
    }
    found[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  });
  return found;
}

/** Open a stage's executed notebook read-only in the main area, at its failing cell if any. */
export async function openExecuted(
  app: JupyterFrontEnd,
  run: PipelineRun,
  stage: string
): Promise<void> {
  const settings = ServerConnection.makeSettings();
  const response = await ServerConnection.makeRequest(
    notebookUrl(run.run_id, stage),
    {},
    settings
  );
  if (!response.ok) {
    const body = await response.json().catch(() => ({ message: response.statusText }));
    throw new ApiError(body.message, response.status);
  }
  const html = await response.text();
  let anchor = '';
  const failing = await api<{ index: number | null; id: string | null }>(
    `runs/${run.run_id}/stages/${stage}/failing-cell`
  );
  if (failing.id) {
    anchor = `#cell-id=${failing.id}`;
  }
  const frame = new IFrame({ sandbox: [] });
  frame.url = URL.createObjectURL(new Blob([html], { type: 'text/html' })) + anchor;
  const widget = new MainAreaWidget({ content: frame });
  widget.id = `mlnb-executed-${run.run_id}-${stage}`;
  widget.title.label = `${stage} · run ${run.run_id.slice(0, 8)} (read-only)`;
  widget.title.caption =
    failing.index !== null
      ? `the executed notebook of ${stage}, at its failing cell ${failing.index}`
      : `the executed notebook of ${stage}`;
  widget.title.closable = true;
  widget.addClass('mlnb-executed');
  app.shell.add(widget, 'main');
  app.shell.activateById(widget.id);
}

export class MlnbPanel extends Widget {
  private pipelines: Pipeline[] = [];
  private selected = '';
  private runs: PipelineRun[] = [];
  private live: PipelineRun | null = null;
  private launch: Launch | null = null;
  private models: ModelStatus[] = [];
  private error = '';
  private timer: number | undefined;
  private busy = false;
  private profile = '';
  private overrides = '';

  constructor(private readonly app: JupyterFrontEnd) {
    super();
    this.id = 'mlnb-panel';
    this.addClass('mlnb-panel');
    this.title.caption = 'mlnb: pipelines, runs and models';
  }

  protected onAfterAttach(): void {
    void this.refresh();
  }

  dispose(): void {
    window.clearInterval(this.timer);
    super.dispose();
  }

  /** Everything again: pipelines, the selected one's runs, a launch under way, models. */
  async refresh(): Promise<void> {
    try {
      const [found, models, launches] = await Promise.all([
        api<{ pipelines: Pipeline[] }>('pipelines'),
        api<{ models: ModelStatus[] }>('models').catch(e => {
          this.error = `models: ${e.message}`;
          return { models: [] as ModelStatus[] };
        }),
        api<{ launches: Launch[] }>('launches')
      ]);
      this.pipelines = found.pipelines;
      this.models = models.models;
      if (!this.pipelines.some(p => p.id === this.selected)) {
        this.selected = this.pipelines.length ? this.pipelines[0].id : '';
      }
      const running = launches.launches.filter(l => l.state !== 'exited');
      if (running.length && !this.launch) {
        this.launch = running[running.length - 1];
        this.selected = this.launch.pipeline;
        this.startPolling();
      }
      await this.loadRuns();
    } catch (e: any) {
      this.error = e.message;
    }
    this.render();
  }

  private async loadRuns(): Promise<void> {
    if (!this.selected) {
      this.runs = [];
      return;
    }
    const found = await api<{ runs: PipelineRun[] }>(`pipelines/${this.selected}/runs?limit=8`);
    this.runs = found.runs;
  }

  private startPolling(): void {
    window.clearInterval(this.timer);
    this.timer = window.setInterval(() => void this.poll(), POLL_MS);
  }

  private async poll(): Promise<void> {
    if (this.busy || !this.launch) {
      return;
    }
    this.busy = true;
    try {
      this.launch = await api<Launch>(`launches/${this.launch.id}`);
      if (this.launch.run_id) {
        this.live = await api<PipelineRun>(`runs/${this.launch.run_id}`);
      }
      await this.loadRuns();
      const ended = this.launch.state === 'exited' && (!this.live || this.live.status !== 'RUNNING');
      if (ended) {
        window.clearInterval(this.timer);
        this.models = (await api<{ models: ModelStatus[] }>('models')).models;
      }
    } catch (e: any) {
      this.error = e.message;
      window.clearInterval(this.timer);
    } finally {
      this.busy = false;
    }
    this.render();
  }

  private async start(pipeline: Pipeline): Promise<void> {
    this.error = '';
    try {
      const params = parseOverrides(this.overrides);
      this.launch = await api<Launch>('runs', {
        method: 'POST',
        body: JSON.stringify({ pipeline: pipeline.id, profile: this.profile || null, params })
      });
      this.live = null;
      this.startPolling();
    } catch (e: any) {
      this.error = e instanceof ApiError && e.problems.length ? e.problems.join('\n') : e.message;
    }
    this.render();
  }

  private async stop(): Promise<void> {
    if (this.launch) {
      try {
        this.launch = await api<Launch>(`launches/${this.launch.id}/stop`, { method: 'POST' });
      } catch (e: any) {
        this.error = e.message;
      }
      this.render();
    }
  }

  private open(run: PipelineRun, stage: string): void {
    openExecuted(this.app, run, stage).catch(e => {
      this.error = e.message;
      this.render();
    });
  }

  private render(): void {
    const node = this.node;
    node.replaceChildren();
    const header = el('div', 'mlnb-header');
    header.append(el('h2', '', 'mlnb'));
    const reload = el('button', 'jp-Button mlnb-refresh', 'Refresh');
    reload.onclick = () => void this.refresh();
    header.append(reload);
    node.append(header);
    if (this.error) {
      node.append(el('pre', 'mlnb-error', this.error));
    }
    node.append(this.renderPipelines(), this.renderRuns(), this.renderModels());
  }

  private renderPipelines(): HTMLElement {
    const section = el('section', 'mlnb-pipelines');
    section.append(el('h3', '', 'Pipelines'));
    if (!this.pipelines.length) {
      section.append(el('p', 'mlnb-empty', 'no pipeline specs in pipelines/'));
      return section;
    }
    const picker = el('select', 'mlnb-pipeline-select');
    for (const p of this.pipelines) {
      const option = el('option', '', `${p.name || p.id} (${p.spec})`);
      option.value = p.id;
      option.selected = p.id === this.selected;
      picker.append(option);
    }
    picker.onchange = () => {
      this.selected = picker.value;
      void this.loadRuns().then(() => this.render());
    };
    section.append(picker);
    const pipeline = this.pipelines.find(p => p.id === this.selected);
    if (!pipeline) {
      return section;
    }
    if (pipeline.description) {
      section.append(el('p', 'mlnb-description', pipeline.description));
    }
    for (const problem of pipeline.problems) {
      section.append(el('div', 'mlnb-problem', problem.text));
    }
    const states: Record<string, StageState> = {};
    const shown = this.live && this.live.pipeline === pipeline.name ? this.live : this.runs[0];
    const current = this.launch && this.launch.pipeline === pipeline.id && this.launch.state !== 'exited';
    if (shown && (current || this.live === shown || shown.status === 'RUNNING')) {
      for (const stage of shown.stages) {
        states[stage.name] = stage.state;
      }
    }
    // a problem at stages.<name>... is drawn on that stage too
    const problems: Record<string, string[]> = {};
    for (const problem of pipeline.problems) {
      const match = /(?:^|: )stages\.([^.]+)/.exec(problem.location); // "line 9: stages.x..."
      if (match) {
        (problems[match[1]] = problems[match[1]] || []).push(problem.message);
      }
    }
    if (pipeline.stages.length) {
      section.append(
        drawDag(pipeline.stages, pipeline.edges, states, problems, stage => {
          const run = shown?.stages.find(s => s.name === stage && s.notebook);
          if (shown && run) {
            this.open(shown, stage);
          }
        })
      );
    }
    section.append(this.renderControls(pipeline));
    return section;
  }

  private renderControls(pipeline: Pipeline): HTMLElement {
    const box = el('div', 'mlnb-controls');
    const profile = el('select', 'mlnb-profile');
    const none = el('option', '', '(no profile)');
    none.value = '';
    profile.append(none);
    for (const name of pipeline.profiles) {
      const option = el('option', '', name);
      option.value = name;
      option.selected = name === this.profile;
      profile.append(option);
    }
    profile.onchange = () => (this.profile = profile.value);
    const params = el('textarea', 'mlnb-params');
    params.placeholder = 'KEY=VALUE or STAGE.KEY=VALUE, one a line';
    params.rows = 2;
    params.value = this.overrides;
    params.oninput = () => (this.overrides = params.value);
    const running = this.launch !== null && this.launch.state !== 'exited';
    const run = el('button', 'jp-Button mlnb-run', 'Run');
    // the server checks the spec, profile and overrides as mlnb run does, and says what is wrong
    run.disabled = running || !pipeline.stages.length;
    run.onclick = () => void this.start(pipeline);
    const stop = el('button', 'jp-Button mlnb-stop', 'Stop');
    stop.disabled = !running || this.launch?.state === 'stopping';
    stop.onclick = () => void this.stop();
    const row = el('div', 'mlnb-row');
    row.append(el('label', '', 'profile '), profile, run, stop);
    box.append(row, params);
    if (this.launch && this.launch.pipeline === pipeline.id) {
      const l = this.launch;
      const said =
        l.state === 'exited'
          ? `mlnb run (pid ${l.pid}) exited with ${l.returncode}`
          : `mlnb run (pid ${l.pid}) ${l.state}`;
      const status = el('div', `mlnb-launch mlnb-launch-${l.state}`, said);
      status.dataset.returncode = String(l.returncode);
      box.append(status);
      const output = el('details', 'mlnb-output');
      output.append(el('summary', '', 'output'), el('pre', '', l.output));
      box.append(output);
    }
    return box;
  }

  private renderRuns(): HTMLElement {
    const section = el('section', 'mlnb-runs');
    section.append(el('h3', '', 'Runs'));
    if (!this.runs.length) {
      section.append(el('p', 'mlnb-empty', 'no runs yet'));
    }
    for (const run of this.runs) {
      const item = el('div', `mlnb-run-item mlnb-status-${run.status.toLowerCase()}`);
      item.dataset.runId = run.run_id;
      const line = el('div', 'mlnb-run-line');
      line.append(
        el('span', 'mlnb-badge', run.status),
        el('span', '', ` ${when(run.started)} · ${duration(run.seconds)} · ${run.trigger}`),
        el('span', '', run.profile ? ` · profile ${run.profile}` : '')
      );
      const link = el('a', 'mlnb-mlflow', 'MLflow');
      link.href = run.url;
      link.target = '_blank';
      link.rel = 'noopener';
      link.title = 'the run in the MLflow UI (mlnb ui serves it for a local store)';
      line.append(' ', link);
      item.append(line);
      const chips = el('div', 'mlnb-chips');
      for (const stage of run.stages) {
        const chip = el('button', `mlnb-chip mlnb-state-${stage.state}`, `${stage.name}: ${stage.state}`);
        chip.dataset.stage = stage.name;
        chip.title = stage.error || (stage.notebook ? 'open the executed notebook' : 'no executed notebook');
        chip.disabled = !stage.notebook;
        chip.onclick = () => this.open(run, stage.name);
        chips.append(chip);
      }
      item.append(chips);
      if (run.error) {
        item.append(el('div', 'mlnb-problem', run.error));
      }
      section.append(item);
    }
    return section;
  }

  private renderModels(): HTMLElement {
    const section = el('section', 'mlnb-models');
    section.append(el('h3', '', 'Models'));
    if (!this.models.length) {
      section.append(el('p', 'mlnb-empty', 'no registered models yet'));
    }
    for (const m of this.models) {
      const item = el('div', 'mlnb-model');
      item.dataset.model = m.name;
      item.append(el('h4', '', m.name));
      const score =
        m.champion_score !== null && m.champion_metric
          ? ` (${m.champion_metric} ${m.champion_score.toFixed(4)})`
          : '';
      item.append(el('div', 'mlnb-champion', `champion: ${m.champion ? 'v' + m.champion + score : 'none'}`));
      if (m.challenger && m.challenger !== m.champion) {
        const decision = m.challenger_decision ? ` — gate: ${m.challenger_decision}` : '';
        item.append(el('div', 'mlnb-challenger', `challenger: v${m.challenger}${decision}`));
      }
      const reason = m.challenger_reason || m.champion_reason;
      if (reason) {
        item.append(el('div', 'mlnb-reason', `gate: ${reason}`));
      }
      item.append(
        el(
          'div',
          'mlnb-served',
          m.served_version ? `served: v${m.served_version} (last at ${m.served_at})` : 'served: no prediction logged yet'
        )
      );
      if (m.checks.length) {
        const list = el('ul', 'mlnb-checks');
        for (const c of m.checks) {
          const figures = Object.entries(c.metrics)
            .map(([k, v]) => `${k} ${v.toPrecision(4)}`)
            .join(', ');
          list.append(el('li', '', `${c.time} v${c.version}: drift ${c.drift}, ${c.decision}${figures ? ', ' + figures : ''}`));
        }
        item.append(list);
      } else {
        item.append(el('div', 'mlnb-empty', 'monitor checks: none yet'));
      }
      section.append(item);
    }
    return section;
  }
}
