import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/**
 * One version inside a name's server: field for field the Python `VersionView`
 * (nbdeploy/vocabulary.py). The live numbers come from the server's window and are null
 * when the server did not answer; `agreement` is null when nothing was compared.
 */
export interface IVersionView {
  version: number;
  weight: number;
  role: 'stable' | 'canary' | 'shadow' | 'idle';
  requests: number | null;
  errors: number | null;
  p50_ms: number | null;
  p99_ms: number | null;
  agreement: number | null;
}

/**
 * One row of `GET nbdeploy/api/deployments`: field for field the Python `DeploymentView`
 * (nbdeploy/vocabulary.py); tests/jupyter/test_labextension_record.py keeps the two equal.
 */
export interface IDeployment {
  name: string;
  version: number;
  runtime: string;
  format: string;
  state: string;
  status: string;
  owner: string;
  url: string;
  infer_url: string;
  proxy_path: string;
  created_at: string;
  variant: string | null;
  p50_ms: number | null;
  p99_ms: number | null;
  latency_source: 'endpoint' | 'in-process' | null;
  demo_url: string | null;
  versions: IVersionView[];
  guard: string | null;
  network: string | null;
  drift: string | null;
}

/**
 * The answer of `GET nbdeploy/api/deployments/<name>/logs`.
 */
export interface ILogs {
  name: string;
  version: number;
  tail: number;
  logs: string;
}

/**
 * Call the nbdeploy server extension; a failure throws with the server's `error` message.
 */
export async function requestAPI<T>(
  endPoint: string,
  init: RequestInit = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'nbdeploy', 'api', endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = text;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: text };
    }
  }
  if (!response.ok) {
    const message =
      data && typeof data.error === 'string'
        ? data.error
        : `HTTP ${response.status}`;
    throw new Error(message);
  }
  return data as T;
}

function deploymentPath(name: string, ...rest: string[]): string {
  return ['deployments', encodeURIComponent(name), ...rest].join('/');
}

export async function listDeployments(): Promise<IDeployment[]> {
  const reply = await requestAPI<{ deployments: IDeployment[] }>('deployments');
  return reply.deployments;
}

export async function stopDeployment(name: string): Promise<void> {
  await requestAPI(deploymentPath(name, 'stop'), { method: 'POST', body: '' });
}

export async function fetchLogs(name: string, tail = 200): Promise<ILogs> {
  return requestAPI<ILogs>(`${deploymentPath(name, 'logs')}?tail=${tail}`);
}

function versionBody(version?: number): string {
  return JSON.stringify(version === undefined ? {} : { version });
}

/**
 * Give a candidate (the newest canary or shadow, or `version`) all traffic and make it stable.
 */
export async function promote(name: string, version?: number): Promise<void> {
  await requestAPI(deploymentPath(name, 'promote'), {
    method: 'POST',
    body: versionBody(version)
  });
}

/**
 * Send all traffic back to the stable version and unload the candidate; without a candidate,
 * serve the previous registered version (or `version`) instead.
 */
export async function rollback(name: string, version?: number): Promise<void> {
  await requestAPI(deploymentPath(name, 'rollback'), {
    method: 'POST',
    body: versionBody(version)
  });
}

/**
 * Split unversioned traffic: integer percents per version, summing to 100.
 */
export async function setTraffic(
  name: string,
  weights: Record<number, number>
): Promise<void> {
  const body: Record<string, number> = {};
  for (const [version, weight] of Object.entries(weights)) {
    body[String(version)] = weight;
  }
  await requestAPI(deploymentPath(name, 'traffic'), {
    method: 'PUT',
    body: JSON.stringify({ weights: body })
  });
}

/**
 * Unload one version that is not the stable one; its traffic goes to the stable version.
 */
export async function stopVersion(
  name: string,
  version: number
): Promise<void> {
  await requestAPI(deploymentPath(name, 'versions', String(version)), {
    method: 'DELETE'
  });
}

/**
 * One version in a `CompareReport` (nbdeploy/compare.py, `VersionComparison`).
 */
export interface IVersionComparison {
  version: number;
  role: string;
  weight: number;
  requests: number;
  errors: number;
  p50_ms: number | null;
  p99_ms: number | null;
  agreement: number | null;
  max_abs_diff: number | null;
  compared: number;
  metric: string | null;
  score: number | null;
  mirrored: number;
}

/**
 * The answer of `GET nbdeploy/api/deployments/<name>/compare`: the live comparison of a
 * name's versions against its stable (`reference`) version.
 */
export interface ICompareReport {
  name: string;
  source: 'live' | 'offline';
  reference: number;
  kind: string;
  versions: IVersionComparison[];
  generated_at: string;
}

export async function compare(name: string): Promise<ICompareReport> {
  return requestAPI<ICompareReport>(deploymentPath(name, 'compare'));
}

/**
 * An absolute URL for a path the server gave relative to Jupyter's base URL.
 */
export function jupyterURL(pathOrUrl: string): string {
  if (/^https?:\/\//.test(pathOrUrl)) {
    return pathOrUrl;
  }
  return URLExt.join(ServerConnection.makeSettings().baseUrl, pathOrUrl);
}

/**
 * The answer of `POST nbdeploy/api/deployments/<name>/demo`: `url` opens the demo through
 * Jupyter (relative to its base URL) when it can, `direct_url` is the demo server on 127.0.0.1.
 */
export interface IDemoLink {
  name: string;
  url: string;
  direct_url: string;
}

/**
 * Start (or reuse) the demo server of a deployment and say where to open it.
 */
export async function startDemo(name: string): Promise<IDemoLink> {
  return requestAPI<IDemoLink>(deploymentPath(name, 'demo'), {
    method: 'POST',
    body: ''
  });
}

/**
 * One version's numbers over a window (Python `nbdeploy.telemetry.VersionStats`); null where
 * nothing was measured. `version` is 0 in a report's `total`.
 */
export interface IVersionStats {
  version: number;
  requests: number;
  errors: number;
  request_rate: number;
  error_rate: number | null;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  batch_size: number | null;
  queue_ms: number | null;
  share: number | null;
}

/**
 * One step of a stats series: per version (keyed by its number as a string), the request
 * rate, p99 latency and error rate over that step.
 */
export interface IStatsPoint {
  t: number;
  request_rate: Record<string, number>;
  p99_ms: Record<string, number | null>;
  error_rate: Record<string, number | null>;
}

/**
 * The answer of `GET nbdeploy/api/deployments/<name>/stats?window=S`
 * (Python `StatsReport.to_dict()`).
 */
export interface IStatsReport {
  name: string;
  window_s: number;
  total: IVersionStats;
  versions: IVersionStats[];
  series: IStatsPoint[];
  generated_at: string;
}

export async function fetchStats(
  name: string,
  window = 60
): Promise<IStatsReport> {
  return requestAPI<IStatsReport>(
    `${deploymentPath(name, 'stats')}?window=${window}`
  );
}

/**
 * One feature of a drift report (Python `nbdeploy.drift_profile.FeatureDrift`).
 */
export interface IFeatureDrift {
  feature: string;
  kind: string;
  psi: number | null;
  bins: string[];
  reference: number[];
  live: number[];
  flag: 'drift' | 'watch' | 'ok' | 'no data';
}

/**
 * The answer of `GET nbdeploy/api/deployments/<name>/drift` (Python `DriftReport.to_dict()`):
 * the features of one version, worst first.
 */
export interface IDriftReport {
  name: string;
  version: number;
  rows: number;
  reference_rows: number;
  window: number;
  features: IFeatureDrift[];
  threshold: number;
  drifted: string[];
  summary: string;
  generated_at: string;
}

export async function fetchDrift(name: string): Promise<IDriftReport> {
  return requestAPI<IDriftReport>(deploymentPath(name, 'drift'));
}
