import { IStatsPoint, IStatsReport } from './api';

const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * Line colours, one per version, in the order the notebook's Monitor uses.
 */
export const COLORS = [
  '#1f77b4',
  '#ff7f0e',
  '#2ca02c',
  '#d62728',
  '#9467bd',
  '#8c564b'
];

export type Point = [number, number | null];

export interface ILine {
  label: string;
  points: Point[];
  dashed?: boolean;
}

type SeriesKey = 'request_rate' | 'p99_ms' | 'error_rate';

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attributes: Record<string, string | number> = {}
): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) {
    node.setAttribute(key, String(value));
  }
  return node;
}

function finite(value: number | null | undefined): value is number {
  return typeof value === 'number' && Number.isFinite(value);
}

/**
 * The newest measured value of a line, or null.
 */
export function lastValue(points: Point[]): number | null {
  for (let i = points.length - 1; i >= 0; i--) {
    const value = points[i][1];
    if (finite(value)) {
      return value;
    }
  }
  return null;
}

/**
 * A short number for an axis or a legend: 0, 0.25, 3.2, 45, 1.2k.
 */
export function short(value: number): string {
  if (value >= 1000) {
    return `${Number((value / 1000).toPrecision(3))}k`;
  }
  return String(Number(value.toPrecision(3)));
}

/**
 * Draw `lines` into `parent` as polylines (gaps where a value is missing), scaled to the box.
 * Each polyline carries `data-series` and `data-last`, so what is drawn can be read back.
 */
function drawLines(
  parent: SVGElement,
  lines: ILine[],
  box: { left: number; top: number; width: number; height: number },
  span: [number, number],
  peak: number
): void {
  const [start, end] = [span[0], Math.max(span[1], span[0] + 1e-9)];
  const x = (t: number) => box.left + (box.width * (t - start)) / (end - start);
  const y = (v: number) => box.top + box.height * (1 - v / peak);
  lines.forEach((line, index) => {
    const color = COLORS[index % COLORS.length];
    const segments: string[][] = [[]];
    for (const [t, v] of line.points) {
      if (finite(v)) {
        segments[segments.length - 1].push(
          `${x(t).toFixed(1)},${y(v).toFixed(1)}`
        );
      } else {
        segments.push([]);
      }
    }
    const drawn = segments.filter(points => points.length > 0);
    const last = lastValue(line.points);
    for (const points of drawn.length > 0 ? drawn : [[]]) {
      if (points.length === 1) {
        const [cx, cy] = points[0].split(',');
        parent.appendChild(svg('circle', { cx, cy, r: 1.8, fill: color }));
      }
      const polyline = svg('polyline', {
        'data-series': line.label,
        'data-last': last === null ? '' : String(last),
        points: points.join(' '),
        fill: 'none',
        stroke: color,
        'stroke-width': 1.5
      });
      if (line.dashed) {
        polyline.setAttribute('stroke-dasharray', '4,2');
      }
      parent.appendChild(polyline);
    }
  });
}

function peakOf(lines: ILine[]): number {
  let peak = 0;
  for (const line of lines) {
    for (const [, v] of line.points) {
      if (finite(v) && v > peak) {
        peak = v;
      }
    }
  }
  return peak * 1.1 || 1;
}

/**
 * A small line chart with a title, a 0..max axis and a legend of each line's newest value.
 */
export function lineChart(options: {
  title: string;
  metric: string;
  lines: ILine[];
  span: [number, number];
  unit?: string;
  width?: number;
  height?: number;
}): SVGSVGElement {
  const width = options.width ?? 320;
  const height = options.height ?? 140;
  const box = { left: 36, top: 30, width: width - 44, height: height - 48 };
  const chart = svg('svg', {
    class: 'nbdeploy-chart',
    'data-metric': options.metric,
    width,
    height,
    viewBox: `0 0 ${width} ${height}`
  });
  const peak = peakOf(options.lines);
  const text = (
    content: string,
    attributes: Record<string, string | number>
  ): SVGTextElement => {
    const node = svg('text', attributes);
    node.textContent = content;
    return node;
  };
  chart.append(
    text(options.title, { x: box.left, y: 12, class: 'nbdeploy-chart-title' }),
    svg('line', {
      x1: box.left,
      y1: box.top + box.height,
      x2: box.left + box.width,
      y2: box.top + box.height,
      class: 'nbdeploy-chart-axis'
    }),
    svg('line', {
      x1: box.left,
      y1: box.top,
      x2: box.left + box.width,
      y2: box.top,
      class: 'nbdeploy-chart-grid'
    }),
    text(short(peak), {
      x: box.left - 3,
      y: box.top + 4,
      'text-anchor': 'end',
      class: 'nbdeploy-chart-tick'
    }),
    text('0', {
      x: box.left - 3,
      y: box.top + box.height,
      'text-anchor': 'end',
      class: 'nbdeploy-chart-tick'
    }),
    text(`-${Math.round(options.span[1] - options.span[0])} s`, {
      x: box.left,
      y: height - 4,
      class: 'nbdeploy-chart-tick'
    }),
    text('now', {
      x: box.left + box.width,
      y: height - 4,
      'text-anchor': 'end',
      class: 'nbdeploy-chart-tick'
    })
  );
  drawLines(chart, options.lines, box, options.span, peak);
  const legend = svg('text', {
    x: box.left,
    y: 24,
    class: 'nbdeploy-chart-legend'
  });
  options.lines.forEach((line, index) => {
    const last = lastValue(line.points);
    const item = svg('tspan', { fill: COLORS[index % COLORS.length] });
    const shown = last === null ? '-' : short(last) + (options.unit ?? '');
    item.textContent = `${index > 0 ? '  ' : ''}${line.label} ${shown}`;
    legend.appendChild(item);
  });
  chart.appendChild(legend);
  return chart;
}

/**
 * A tiny line with no axes, for a sidebar row.
 */
export function sparkline(
  metric: string,
  points: Point[],
  span: [number, number],
  width = 90,
  height = 20
): SVGSVGElement {
  const chart = svg('svg', {
    class: 'nbdeploy-sparkline',
    'data-metric': metric,
    width,
    height,
    viewBox: `0 0 ${width} ${height}`
  });
  const lines = [{ label: metric, points }];
  drawLines(
    chart,
    lines,
    { left: 1, top: 2, width: width - 2, height: height - 4 },
    span,
    peakOf(lines)
  );
  return chart;
}

/**
 * The versions a report has numbers for, in order.
 */
export function versionsOf(report: IStatsReport): number[] {
  return report.versions.map(v => v.version).sort((a, b) => a - b);
}

/**
 * One line per version of a series key (scaled, e.g. x100 for a percentage).
 */
export function versionLines(
  report: IStatsReport,
  key: SeriesKey,
  scale = 1
): ILine[] {
  return versionsOf(report).map(version => ({
    label: `v${version}`,
    points: report.series.map(point => {
      const value = point[key][String(version)];
      return [point.t, finite(value) ? value * scale : null] as Point;
    })
  }));
}

function combine(
  point: IStatsPoint,
  key: SeriesKey,
  how: (values: number[]) => number
): number | null {
  const values = Object.values(point[key]).filter(finite);
  return values.length > 0 ? how(values) : null;
}

/**
 * Requests per second of all versions together, step by step.
 */
export function totalRate(report: IStatsReport): Point[] {
  return report.series.map(point => [
    point.t,
    combine(point, 'request_rate', values => values.reduce((a, b) => a + b, 0))
  ]);
}

/**
 * The worst p99 latency of any version, step by step.
 */
export function worstP99(report: IStatsReport): Point[] {
  return report.series.map(point => [
    point.t,
    combine(point, 'p99_ms', values => Math.max(...values))
  ]);
}

/**
 * The time range a report's charts show: the `window` seconds asked for (a server that
 * started lately has less history), ending at its newest step.
 */
export function spanOf(report: IStatsReport, window: number): [number, number] {
  const end =
    report.series.length > 0
      ? report.series[report.series.length - 1].t
      : Date.now() / 1000;
  return [end - Math.max(window, report.window_s), end];
}
