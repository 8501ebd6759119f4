import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import {
  fetchStats,
  IDeployment,
  IStatsReport,
  listDeployments,
  promote,
  rollback,
  setTraffic,
  stopVersion
} from './api';

/**
 * The default and smallest reload interval, in seconds (as in schema/plugin.json).
 */
export const DEFAULT_REFRESH_SECONDS = 5;
const MIN_REFRESH_SECONDS = 1;
const MAX_REFRESH_SECONDS = 24 * 60 * 60;

/**
 * Seconds of history behind each row's request-rate and p99 sparklines.
 */
export const SPARKLINE_WINDOW_SECONDS = 60;

/**
 * The deployments the server lists, and why the last reload failed, kept fresh by a Poll.
 *
 * The Poll stands by while no view shows the list (`visible` is false) and while the browser
 * tab is hidden, so a collapsed sidebar costs the server nothing; failed reloads back off.
 * Each reload also reads the live numbers of every running deployment (its sparklines).
 */
export class DeploymentsModel {
  constructor(options: DeploymentsModel.IOptions = {}) {
    this._poll = new Poll({
      name: 'nbdeploy:deployments',
      factory: () => this._load(),
      frequency: frequency(options.refreshInterval ?? DEFAULT_REFRESH_SECONDS),
      standby: () => !this._visible || 'when-hidden'
    });
  }

  /**
   * Emitted when the list, the error, `loaded` or a deployment's busy state changes (not on
   * every identical reload, so views do not rebuild rows a user is about to click).
   */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /**
   * Emitted after each reload's live numbers are read (see `stats`); views update their
   * sparklines in place on it instead of rebuilding rows.
   */
  get statsChanged(): ISignal<this, void> {
    return this._statsChanged;
  }

  /**
   * The live numbers of a running deployment over the last minute, from the last reload;
   * null when its server did not answer them.
   */
  stats(name: string): IStatsReport | null {
    return this._stats.get(name) ?? null;
  }

  /**
   * The deployments of the last successful reload, in the server's order.
   */
  get deployments(): readonly IDeployment[] {
    return this._deployments;
  }

  /**
   * Why the last reload failed, or null when it succeeded.
   */
  get error(): string | null {
    return this._error;
  }

  /**
   * Whether a reload has succeeded yet: an empty list before that means "unknown", not "none".
   */
  get loaded(): boolean {
    return this._loaded;
  }

  /**
   * Seconds between reloads; a change applies at once (with an immediate reload).
   */
  get refreshInterval(): number {
    return this._poll.frequency.interval / 1000;
  }
  set refreshInterval(seconds: number) {
    const next = frequency(seconds);
    if (next.interval !== this._poll.frequency.interval) {
      this._poll.frequency = next;
      void this._poll.refresh();
    }
  }

  /**
   * Whether a view shows the list; the view sets it on show and hide. Becoming visible
   * reloads at once, so an opened sidebar is never a poll interval behind.
   */
  get visible(): boolean {
    return this._visible;
  }
  set visible(value: boolean) {
    if (value === this._visible) {
      return;
    }
    this._visible = value;
    if (value) {
      void this.refresh();
    }
  }

  get isDisposed(): boolean {
    return this._poll.isDisposed;
  }

  /**
   * Reload now (after a Stop, or on the Refresh button); resolves once the reload is done.
   * Overlapping calls share one request.
   */
  async refresh(): Promise<void> {
    if (this.isDisposed) {
      return;
    }
    await this._poll.refresh();
    await this._poll.tick.catch(() => undefined);
  }

  /**
   * Whether an action (promote, rollback, traffic, stop version) on `name` is under way.
   */
  isBusy(name: string): boolean {
    return this._busy.has(name);
  }

  /**
   * Give a candidate of `name` (the newest canary or shadow, or `version`) all traffic.
   */
  promote(name: string, version?: number): Promise<void> {
    return this._act(name, () => promote(name, version));
  }

  /**
   * Send all traffic of `name` back to its stable version (unloading the candidate), or serve
   * an earlier version when there is no candidate.
   */
  rollback(name: string, version?: number): Promise<void> {
    return this._act(name, () => rollback(name, version));
  }

  /**
   * Split the unversioned traffic of `name`: integer percents per version, summing to 100.
   */
  setTraffic(name: string, weights: Record<number, number>): Promise<void> {
    return this._act(name, () => setTraffic(name, weights));
  }

  /**
   * Unload one version of `name` that is not its stable version.
   */
  stopVersion(name: string, version: number): Promise<void> {
    return this._act(name, () => stopVersion(name, version));
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    Signal.clearData(this);
  }

  /**
   * Run one action on `name`: `changed` is emitted when it starts and once the list after it
   * is loaded, so a view can disable that deployment's buttons meanwhile. The action's error
   * is rethrown after the reload.
   */
  private async _act(name: string, call: () => Promise<void>): Promise<void> {
    this._busy.add(name);
    this._changed.emit();
    try {
      await call();
    } finally {
      await this.refresh();
      this._busy.delete(name);
      if (!this.isDisposed) {
        this._changed.emit();
      }
    }
  }

  /**
   * One poll tick; a failure is kept for the view and rethrown so the Poll backs off.
   */
  private async _load(): Promise<void> {
    try {
      const rows = await listDeployments();
      this._update(rows, null);
      await this._loadStats(rows);
    } catch (error) {
      this._update(
        this._deployments,
        `Cannot list deployments: ${(error as Error).message}`
      );
      throw error;
    }
  }

  /**
   * Read every running deployment's numbers; one that fails (its server is restarting, or
   * predates the stats route) just has none, without failing the reload.
   */
  private async _loadStats(rows: IDeployment[]): Promise<void> {
    const running = rows.filter(row => row.status === 'running');
    const answers = await Promise.allSettled(
      running.map(row => fetchStats(row.name, SPARKLINE_WINDOW_SECONDS))
    );
    const stats = new Map<string, IStatsReport>();
    answers.forEach((answer, index) => {
      if (answer.status === 'fulfilled') {
        stats.set(running[index].name, answer.value);
      }
    });
    if (this.isDisposed) {
      return;
    }
    this._stats = stats;
    this._statsChanged.emit();
  }

  private _update(rows: IDeployment[], error: string | null): void {
    const loaded = this._loaded || error === null;
    const snapshot = JSON.stringify([rows, error, loaded]);
    if (snapshot === this._snapshot || this.isDisposed) {
      return;
    }
    this._snapshot = snapshot;
    this._deployments = rows;
    this._error = error;
    this._loaded = loaded;
    this._changed.emit();
  }

  private readonly _busy = new Set<string>();
  private readonly _changed = new Signal<this, void>(this);
  private _deployments: IDeployment[] = [];
  private _error: string | null = null;
  private _loaded = false;
  private readonly _poll: Poll;
  private _snapshot = '';
  private _stats = new Map<string, IStatsReport>();
  private readonly _statsChanged = new Signal<this, void>(this);
  private _visible = false;
}

export namespace DeploymentsModel {
  export interface IOptions {
    /**
     * Seconds between reloads while visible (default 5, at least 1).
     */
    refreshInterval?: number;
  }
}

/**
 * Poll timing for a reload interval in seconds: failures back off up to a minute (or the
 * interval itself when that is longer).
 */
function frequency(seconds: number) {
  const clamped = Math.min(
    MAX_REFRESH_SECONDS,
    Math.max(
      MIN_REFRESH_SECONDS,
      Number.isFinite(seconds) ? seconds : DEFAULT_REFRESH_SECONDS
    )
  );
  const interval = Math.round(clamped * 1000);
  return { interval, backoff: true, max: Math.max(interval, 60 * 1000) };
}
