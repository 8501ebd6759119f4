import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

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
