// The mlnb server extension's REST API (/mlnb/api/), on Jupyter's own token.
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface Problem {
  file: string;
  location: string;
  message: string;
  text: string;
}

export interface StageNode {
  name: string;
  notebook: string;
  outputs: string[];
  level: number;
}

export interface Edge {
  source: string;
  target: string;
  kind: 'output' | 'needs';
  output: string | null;
  param: string | null;
}

export interface Pipeline {
  id: string;
  spec: string;
  name: string | null;
  description: string;
  profiles: string[];
  stages: StageNode[];
  edges: Edge[];
  problems: Problem[];
  model: string | null;
}

export type StageState =
  | 'pending'
  | 'running'
  | 'succeeded'
  | 'cached'
  | 'reused'
  | 'failed'
  | 'skipped'
  | 'killed';

export interface StageRun {
  name: string;
  state: StageState;
  run_id: string;
  seconds: number | null;
  error: string | null;
  cached_from: string | null;
  notebook: boolean;
  url: string;
}

export interface PipelineRun {
  run_id: string;
  pipeline: string;
  status: string;
  started: number;
  seconds: number;
  trigger: string;
  profile: string;
  overrides: string;
  url: string;
  stages: StageRun[];
  error: string | null;
  model_version: string | null;
}

export interface Launch {
  id: string;
  pipeline: string;
  profile: string | null;
  params: Record<string, string>;
  pid: number;
  started: number;
  state: 'running' | 'stopping' | 'exited';
  returncode: number | null;
  run_id: string | null;
  output: string;
}

export interface CheckLine {
  time: string;
  version: string;
  drift: string;
  decision: string;
  labels: string;
  metrics: Record<string, number>;
}

export interface ModelStatus {
  name: string;
  champion: string | null;
  challenger: string | null;
  champion_metric: string | null;
  champion_score: number | null;
  challenger_decision: string | null;
  challenger_reason: string | null;
  champion_reason: string | null;
  served_version: string | null;
  served_at: string | null;
  checks: CheckLine[];
}

export interface ParameterUse {
  pipeline: string;
  stage: string;
  profiles: string[];
  runs: { run_id: string; status: string; started: number; profile: string }[];
}

export interface Parameters {
  pipeline: string;
  stage: string;
  source: string;
  origin: string;
  run_id: string | null;
  note: string;
}

/** An answer of the API that was not a success: its message names what to fix. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly problems: string[] = []
  ) {
    super(message);
  }
}

/** Call the API at `path` (below /mlnb/api/); the JSON answer, or an ApiError. */
export async function api<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'mlnb', 'api', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  let data: any = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { message: text };
  }
  if (!response.ok) {
    throw new ApiError(data.message || response.statusText, response.status, data.problems);
  }
  return data as T;
}

/** The URL of a stage's executed notebook (HTML), for an iframe. */
export function notebookUrl(runId: string, stage: string): string {
  const settings = ServerConnection.makeSettings();
  return URLExt.join(settings.baseUrl, 'mlnb', 'api', 'runs', runId, 'stages', stage, 'notebook');
}
