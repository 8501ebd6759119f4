/**
 * Small helpers the sidebar and the monitor share: building elements and writing latencies.
 */

/** A new ``tag`` element with a class and, if given, its text. */
export function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/**
 * Milliseconds with three significant digits at most (``0.412``, ``12.3``, ``250``), or
 * ``missing`` when there is no finite value.
 */
export function ms(value: number | null | undefined, missing = ''): string {
  if (value === null || value === undefined || !Number.isFinite(value)) {
    return missing;
  }
  if (value >= 100) {
    return value.toFixed(0);
  }
  if (value >= 10) {
    return value.toFixed(1);
  }
  return value >= 1 ? value.toFixed(2) : value.toFixed(3);
}
