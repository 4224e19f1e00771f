// A pipeline's stages drawn as a DAG: one row per topological level, edges as lines.
import { Edge, StageNode, StageState } from './api';

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 118;
const HEIGHT = 30;
const GAP_X = 14;
const GAP_Y = 36;
// room on each side for bowed edges and their labels
const LABEL = 48;

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attributes: Record<string, string | number>
): SVGElementTagNameMap[K] {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) {
    element.setAttribute(key, String(value));
  }
  return element;
}

/** Draw `stages` and `edges`; each stage is a <g class="mlnb-stage" data-stage data-state>. */
export function drawDag(
  stages: StageNode[],
  edges: Edge[],
  states: Record<string, StageState>,
  problems: Record<string, string[]>,
  onStage: (stage: string) => void
): SVGSVGElement {
  const rows: StageNode[][] = [];
  for (const stage of stages) {
    (rows[stage.level] = rows[stage.level] || []).push(stage);
  }
  const widest = Math.max(1, ...rows.map(row => (row ? row.length : 0)));
  const width = widest * WIDTH + (widest + 1) * GAP_X + 2 * LABEL;
  const height = rows.length * HEIGHT + (rows.length + 1) * GAP_Y - GAP_Y / 2;
  const where: Record<string, { x: number; y: number }> = {};
  rows.forEach((row, level) => {
    if (!row) {
      return;
    }
    const offset = (width - (row.length * WIDTH + (row.length - 1) * GAP_X)) / 2;
    row.forEach((stage, index) => {
      where[stage.name] = {
        x: offset + index * (WIDTH + GAP_X),
        y: GAP_Y / 2 + level * (HEIGHT + GAP_Y)
      };
    });
  });
  const root = svg('svg', {
    class: 'mlnb-dag',
    width,
    height,
    viewBox: `0 0 ${width} ${height}`
  });
  const defs = svg('defs', {});
  const marker = svg('marker', {
    id: 'mlnb-arrow',
    viewBox: '0 0 10 10',
    refX: 9,
    refY: 5,
    markerWidth: 6,
    markerHeight: 6,
    orient: 'auto-start-reverse'
  });
  marker.appendChild(svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'mlnb-arrowhead' }));
  defs.appendChild(marker);
  root.appendChild(defs);
  // one line per pair of stages, labelled with the outputs it carries
  const pairs = new Map<string, Edge[]>();
  for (const edge of edges) {
    const key = `${edge.source}\u0000${edge.target}`;
    pairs.set(key, [...(pairs.get(key) || []), edge]);
  }
  for (const carried of pairs.values()) {
    const from = where[carried[0].source];
    const to = where[carried[0].target];
    if (!from || !to) {
      continue;
    }
    const x1 = from.x + WIDTH / 2;
    const y1 = from.y + HEIGHT;
    const x2 = to.x + WIDTH / 2;
    const y2 = to.y;
    // an edge that skips a level bows to the side, clear of the stages between
    const skips = to.y - from.y > HEIGHT + GAP_Y;
    const bow = skips ? WIDTH / 2 + GAP_X : 0;
    const line = svg('path', {
      d: `M ${x1} ${y1} Q ${(x1 + x2) / 2 + 2 * bow} ${(y1 + y2) / 2} ${x2} ${y2}`,
      fill: 'none',
      class: `mlnb-edge mlnb-edge-${carried.some(e => e.kind === 'output') ? 'output' : 'needs'}`,
      'marker-end': 'url(#mlnb-arrow)'
    });
    const label = carried.map(e => (e.kind === 'output' ? e.output : 'needs')).join(', ');
    const title = svg('title', {});
    title.textContent = carried
      .map(e =>
        e.kind === 'output'
          ? `${e.target}.${e.param} = \${${e.source}.outputs.${e.output}}`
          : `${e.target} needs ${e.source}`
      )
      .join('\n');
    line.appendChild(title);
    root.appendChild(line);
    const text = svg('text', {
      x: (x1 + x2) / 2 + bow + 4,
      y: (y1 + y2) / 2 + 3,
      class: 'mlnb-edge-label'
    });
    text.textContent = label;
    root.appendChild(text);
  }
  for (const stage of stages) {
    const at = where[stage.name];
    const state = states[stage.name] || 'pending';
    const wrong = problems[stage.name] || [];
    const group = svg('g', {
      class: `mlnb-stage mlnb-state-${state}${wrong.length ? ' mlnb-has-problem' : ''}`,
      'data-stage': stage.name,
      'data-state': state,
      transform: `translate(${at.x},${at.y})`
    });
    group.appendChild(svg('rect', { width: WIDTH, height: HEIGHT, rx: 5, ry: 5 }));
    const name = svg('text', { x: WIDTH / 2, y: 13, 'text-anchor': 'middle', class: 'mlnb-name' });
    name.textContent = stage.name;
    const status = svg('text', {
      x: WIDTH / 2,
      y: 25,
      'text-anchor': 'middle',
      class: 'mlnb-state'
    });
    status.textContent = state;
    const title = svg('title', {});
    title.textContent = [`${stage.name}: ${stage.notebook} (${state})`, ...wrong].join('\n');
    group.append(title, name, status);
    group.addEventListener('click', () => onStage(stage.name));
    root.appendChild(group);
  }
  return root;
}
