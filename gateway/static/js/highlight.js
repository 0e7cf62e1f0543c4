// Entities drawn inside their text, one colour per type, as spaCy's displaCy does.

import { el, fmtScore } from "./util.js";

// displaCy's palette for the CoNLL types; other label sets get a stable colour from the name.
const PALETTE = {
  PER: "#aa9cfc",
  PERSON: "#aa9cfc",
  ORG: "#7aecec",
  LOC: "#ff9561",
  GPE: "#feca74",
  MISC: "#feca74",
  NORP: "#c887fb",
  FAC: "#9cc9cc",
  PRODUCT: "#bfeeb7",
  EVENT: "#ffeb80",
  WORK_OF_ART: "#f0d0ff",
  LAW: "#ff8197",
  LANGUAGE: "#ff8197",
  DATE: "#bfe1d9",
  TIME: "#bfe1d9",
  MONEY: "#e4e7d2",
  QUANTITY: "#e4e7d2",
  PERCENT: "#e4e7d2",
};

export function colourFor(type) {
  const known = PALETTE[String(type).toUpperCase()];
  if (known) return known;
  let hash = 0;
  for (const ch of String(type)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 75% 80%)`;
}

/**
 * The API's offsets count Unicode code points (Python's str); JavaScript strings count UTF-16
 * units. Returns a function mapping one to the other (identity when the text has no astral chars).
 */
export function codePointToUtf16(text) {
  if (!/[\uD800-\uDFFF]/.test(text)) return (index) => index;
  const map = [];
  let unit = 0;
  for (const ch of text) {
    map.push(unit);
    unit += ch.length;
  }
  map.push(unit);
  return (index) => map[Math.max(0, Math.min(index, map.length - 1))];
}

export function entityMark(surface, entity) {
  const type = entity.entity_group ?? entity.type ?? entity.label ?? "?";
  const tip = entity.score === undefined ? type : `${type} · score ${fmtScore(entity.score)}`;
  const mark = el(
    "mark",
    {
      class: "ent",
      tabindex: "0",
      "aria-label": `${surface}: ${tip}`,
      dataset: { type, tip, score: entity.score ?? "" },
    },
    el("span", { class: "ent-text" }, surface),
    el("span", { class: "ent-label", "aria-hidden": "true" }, type),
  );
  mark.style.setProperty("--ent-colour", colourFor(type));
  return mark;
}

/** Render `text` into `container` with `entities` ({entity_group, score, start, end}) highlighted. */
export function renderEntities(container, text, entities) {
  const toUtf16 = codePointToUtf16(text);
  const sorted = [...entities].sort((a, b) => a.start - b.start || b.end - a.end);
  const fragment = document.createDocumentFragment();
  let pos = 0;
  for (const entity of sorted) {
    const start = toUtf16(entity.start);
    const end = toUtf16(entity.end);
    if (start < pos || end <= start) continue; // overlapping or empty: never garble the text
    if (start > pos) fragment.append(text.slice(pos, start));
    fragment.append(entityMark(text.slice(start, end), entity));
    pos = end;
  }
  if (pos < text.length) fragment.append(text.slice(pos));
  container.replaceChildren(fragment);
}

/** Entities as chips when the text itself is not at hand. */
export function renderChips(container, entities) {
  container.replaceChildren(
    ...entities.map((entity) => entityMark(entity.word ?? entity.text ?? "", entity)),
  );
}

/** A legend: each type with its count, in the type's colour. */
export function renderLegend(container, entities) {
  const counts = new Map();
  for (const entity of entities) counts.set(entity.entity_group, (counts.get(entity.entity_group) || 0) + 1);
  const types = [...counts.keys()].sort();
  container.replaceChildren(
    ...types.map((type) => {
      const chip = el("span", { class: "legend-item", dataset: { type } }, el("b", {}, type), ` ${counts.get(type)}`);
      chip.style.setProperty("--ent-colour", colourFor(type));
      return chip;
    }),
  );
}

/** One floating tooltip for every entity on the page: its type and score, on hover or focus. */
export function installEntityTooltip() {
  const tip = el("div", { class: "tooltip", role: "tooltip", id: "entity-tooltip", hidden: true });
  document.body.append(tip);
  const show = (event) => {
    const mark = event.target.closest?.("mark.ent");
    if (!mark) return;
    tip.textContent = mark.dataset.tip;
    tip.hidden = false;
    const box = mark.getBoundingClientRect();
    const width = tip.offsetWidth;
    const left = Math.max(4, Math.min(box.left, window.innerWidth - width - 4));
    const above = box.top - tip.offsetHeight - 6;
    tip.style.left = `${left}px`;
    tip.style.top = `${above >= 4 ? above : box.bottom + 6}px`;
  };
  const hide = (event) => {
    if (event.target.closest?.("mark.ent")) tip.hidden = true;
  };
  document.addEventListener("mouseover", show);
  document.addEventListener("focusin", show);
  document.addEventListener("mouseout", hide);
  document.addEventListener("focusout", hide);
  document.addEventListener("scroll", () => (tip.hidden = true), true);
}
