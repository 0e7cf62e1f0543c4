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

// What each type means; the default model's four CoNLL-2003 types, and OntoNotes' common ones.
export const TYPE_DESCRIPTIONS = {
  PER: "Person: people's names, real or fictional",
  PERSON: "Person: people's names, real or fictional",
  ORG: "Organisation: companies, agencies, institutions, teams",
  LOC: "Location: countries, cities, regions, mountains, rivers",
  MISC: "Miscellaneous: nationalities, events, languages, works, products and other names",
  GPE: "Countries, cities and states",
  NORP: "Nationalities, religious or political groups",
  DATE: "Dates and periods",
  MONEY: "Monetary values",
};

export function describeType(type) {
  return TYPE_DESCRIPTIONS[String(type).toUpperCase()] || `${type}: a type of this model`;
}

const typeOf = (entity) => entity.entity_group ?? entity.type ?? entity.label ?? "?";

export function entityMark(surface, entity) {
  const type = typeOf(entity);
  const tip = entity.score === undefined ? type : `${type} · score ${fmtScore(entity.score)}`;
  const mark = el(
    "mark",
    {
      class: "ent",
      // One tab stop for the whole text: its container moves focus between marks with arrow keys.
      tabindex: "-1",
      "aria-label": `${surface}: ${tip}`,
      dataset: { type, tip, score: entity.score ?? "" },
    },
    el("span", { class: "ent-text" }, surface),
    el("span", { class: "ent-label", "aria-hidden": "true" }, type),
    entity.score === undefined ? null : el("span", { class: "ent-score", "aria-hidden": "true" }, Number(entity.score).toFixed(2)),
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
  enableArrowKeys(container);
}

/** Entities as chips when the text itself is not at hand. */
export function renderChips(container, entities) {
  container.replaceChildren(...entities.map((entity) => entityMark(entity.word ?? entity.text ?? "", entity)));
  enableArrowKeys(container);
}

/** The container is one tab stop; arrow keys (Home, End) move the focus from entity to entity. */
export function enableArrowKeys(container) {
  if (!container.hasAttribute("tabindex")) container.setAttribute("tabindex", "0");
  if (!container.getAttribute("role")) container.setAttribute("role", "group");
  if (!container.getAttribute("aria-label")) {
    container.setAttribute("aria-label", "Text with entities highlighted; arrow keys move between entities");
  }
  if (container.dataset.arrows) return;
  container.dataset.arrows = "true";
  container.addEventListener("keydown", (event) => {
    const keys = ["ArrowRight", "ArrowDown", "ArrowLeft", "ArrowUp", "Home", "End"];
    if (!keys.includes(event.key)) return;
    const marks = [...container.querySelectorAll("mark.ent:not(.ent-off)")];
    if (!marks.length) return;
    event.preventDefault();
    const current = marks.indexOf(document.activeElement);
    let next;
    if (event.key === "Home") next = 0;
    else if (event.key === "End") next = marks.length - 1;
    else if (event.key === "ArrowRight" || event.key === "ArrowDown") next = current < 0 ? 0 : Math.min(marks.length - 1, current + 1);
    else next = current < 0 ? 0 : Math.max(0, current - 1);
    marks[next].focus();
  });
}

/**
 * A legend of toggle buttons: each type with its count, in the type's colour; pressing one hides
 * or shows that type's marks in `targets`. `onChange` is told the hidden types.
 */
export function renderLegend(container, entities, { hidden = new Set(), onChange } = {}) {
  const counts = new Map();
  for (const entity of entities) counts.set(typeOf(entity), (counts.get(typeOf(entity)) || 0) + 1);
  const types = [...counts.keys()].sort();
  container.replaceChildren(
    ...types.map((type) => {
      const chip = el(
        "button",
        {
          type: "button",
          class: "legend-item",
          title: describeType(type),
          "aria-pressed": hidden.has(type) ? "false" : "true",
          dataset: { type },
        },
        el("b", {}, type),
        ` ${counts.get(type)}`,
      );
      chip.style.setProperty("--ent-colour", colourFor(type));
      chip.addEventListener("click", () => {
        const shown = chip.getAttribute("aria-pressed") === "true";
        chip.setAttribute("aria-pressed", shown ? "false" : "true");
        if (shown) hidden.add(type);
        else hidden.delete(type);
        onChange?.(hidden);
      });
      return chip;
    }),
  );
  return types;
}

/** Dim the marks of hidden types and those scored under `threshold`; returns how many stay shown. */
export function applyFilter(container, hidden, threshold) {
  let shown = 0;
  for (const mark of container.querySelectorAll("mark.ent")) {
    const score = mark.dataset.score === "" ? 1 : Number(mark.dataset.score);
    const off = hidden.has(mark.dataset.type) || score < threshold;
    mark.classList.toggle("ent-off", off);
    if (!off) shown += 1;
  }
  return shown;
}

/** The types found, each with what it means. */
export function renderTypeHelp(container, types) {
  container.replaceChildren(
    ...types.flatMap((type) => [el("dt", {}, type), el("dd", { dataset: { type } }, describeType(type).replace(/^[^:]*: /, ""))]),
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
