/**
 * dom.js: the few DOM helpers the web chat needs. Everything a user typed reaches the page
 * through `textContent` or an attribute, never through markup: the page's CSP requires
 * Trusted Types, so an `innerHTML` with a string would throw rather than render.
 */

/**
 * Create an element: h('li', {class: 'msg', dataset: {seq: 3}, text: 'hi'}, child, ...).
 * `text` sets textContent; `on` maps event names to listeners; other keys become attributes
 * (`true` -> present, `false`/null -> absent).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'text') el.textContent = String(value);
    else if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'on') for (const [name, fn] of Object.entries(value)) el.addEventListener(name, fn);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
const ICONS = {
  clock: 'M8 1.5a6.5 6.5 0 1 0 0 13 6.5 6.5 0 0 0 0-13Zm.75 3v3.19l2.28 2.28-1.06 1.06L7.25 8.31V4.5h1.5Z',
  check: 'M13.78 4.22a.75.75 0 0 1 0 1.06l-7 7a.75.75 0 0 1-1.06 0l-3.5-3.5 1.06-1.06L6.25 10.69l6.47-6.47a.75.75 0 0 1 1.06 0Z',
  alert: 'M8 1.5a6.5 6.5 0 1 0 0 13 6.5 6.5 0 0 0 0-13Zm-.75 3h1.5v4.5h-1.5V4.5Zm0 6h1.5V12h-1.5v-1.5Z',
  lock: 'M5 7V5a3 3 0 0 1 6 0v2h.5A1.5 1.5 0 0 1 13 8.5v5a1.5 1.5 0 0 1-1.5 1.5h-7A1.5 1.5 0 0 1 3 13.5v-5A1.5 1.5 0 0 1 4.5 7H5Zm1.5 0h3V5a1.5 1.5 0 0 0-3 0v2Z',
  hash: 'M6.2 2 5.8 5H3v1.5h2.6l-.4 3H2.5V11h2.5l-.4 3h1.5l.4-3h3l-.4 3h1.5l.4-3H14V9.5h-2.3l.4-3H14.5V5h-2.2l.4-3h-1.5l-.4 3h-3l.4-3H6.2Zm1.1 4.5h3l-.4 3h-3l.4-3Z',
};

/** A small inline icon (decorative: hidden from screen readers). */
export function icon(name, cls = 'icon') {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 16 16');
  svg.setAttribute('class', cls);
  svg.setAttribute('aria-hidden', 'true');
  const path = document.createElementNS(SVG, 'path');
  path.setAttribute('d', ICONS[name]);
  path.setAttribute('fill', 'currentColor');
  svg.append(path);
  return svg;
}

/** A stable colour class (c0..c7) for a user name. */
export function colourOf(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `c${hash % 8}`;
}

/** A round avatar with the name's first letter. */
export function avatar(name, extra = '') {
  const letter = [...name][0]?.toUpperCase() ?? '?';
  return h('span', { class: `avatar ${colourOf(name)} ${extra}`.trim(), 'aria-hidden': 'true', text: letter });
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
const dayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });
const yearFormat = new Intl.DateTimeFormat(undefined, { year: 'numeric', month: 'long', day: 'numeric' });

/** "14:03" (local time of the server timestamp `ts`, milliseconds). */
export function clockTime(ts) {
  return timeFormat.format(new Date(ts));
}

export function fullTime(ts) {
  return fullFormat.format(new Date(ts));
}

/** "Today", "Yesterday", "Monday, March 3", or a date with its year. */
export function dayLabel(ts) {
  const date = new Date(ts);
  const today = new Date();
  const start = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  const days = Math.round((start(today) - start(date)) / 86400000);
  if (days === 0) return 'Today';
  if (days === 1) return 'Yesterday';
  if (date.getFullYear() === today.getFullYear()) return dayFormat.format(date);
  return yearFormat.format(date);
}

/** The local calendar day of `ts`, for grouping. */
export function dayKey(ts) {
  const d = new Date(ts);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

/** "alice", "alice and bob", "alice, bob and carol". */
export function listNames(names) {
  if (names.length <= 1) return names.join('');
  return `${names.slice(0, -1).join(', ')} and ${names.at(-1)}`;
}
