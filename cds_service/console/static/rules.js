// The rule review page: every rule from GET /console/api/rules, with its trigger, scope, facts and
// their sources, card wording and its length, review status and the fixture patients that fire
// it. Text goes into the page as text; card wording through the escaping renderer of markdown.js.

import { renderMarkdown } from "./markdown.js";

const ROOT = new URL(document.body.dataset.root || "./", window.location.href);
const WEB_URL = /^https?:\/\//i;
const $ = (id) => document.getElementById(id);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "className") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function link(url, text) {
  return WEB_URL.test(url || "")
    ? element("a", { href: url, target: "_blank", rel: "noopener noreferrer", text })
    : document.createTextNode(text);
}

function markdown(text) {
  const box = element("div", { className: "card-detail" });
  box.innerHTML = renderMarkdown(text);
  return box;
}

function words(n) {
  return `${n} word${n === 1 ? "" : "s"}`;
}

function consoleLink(patient, hook) {
  const query = new URLSearchParams({ patient, hook });
  return new URL(`console?${query}`, ROOT).toString();
}

function firedBy(rule) {
  if (!rule.firedBy.length) return element("p", { text: "None of the fixture patients." });
  const list = element("ul", { className: "fired-by" });
  for (const fired of rule.firedBy) {
    const item = element("li", {}, element("span", { className: "fixture-name", text: fired.patient }), ": ");
    fired.hooks.forEach((hook, n) => {
      if (n) item.append(", ");
      item.append(
        element("a", {
          href: consoleLink(fired.patient, hook),
          "aria-label": `Fire ${hook} for ${fired.patient}`,
          text: hook,
        }),
      );
    });
    list.append(item);
  }
  return list;
}

function wordingBlock(title, wording) {
  return element(
    "div",
    { className: "wording" },
    element("h4", { text: title }),
    element(
      "p",
      {},
      element("strong", { text: "Summary " }),
      element(
        "span",
        { className: "length" },
        `(${words(wording.summaryWords)}, ${wording.summaryChars} characters as written; at most 139 on a card)`,
      ),
    ),
    element("blockquote", { className: "summary-template", text: wording.summary }),
    element(
      "p",
      {},
      element("strong", { text: "Detail " }),
      element("span", { className: "length", text: `(${words(wording.detailWords)}; the card adds the data behind it and its sources)` }),
    ),
    markdown(wording.detail),
  );
}

function definitionList(pairs) {
  const list = element("dl", { className: "facts-list" });
  for (const [term, value] of pairs) {
    list.append(element("dt", { text: term }), element("dd", {}, value));
  }
  return list;
}

function suggestionList(suggestions) {
  if (!suggestions || !suggestions.length) return document.createTextNode("none");
  const list = element("ul");
  for (const s of suggestions) {
    const actions = s.actions.map((a) => `${a.type}: ${a.description}`).join("; ");
    list.append(element("li", { text: `${s.label}${s.recommended ? " (recommended)" : ""}: ${actions}` }));
  }
  return list;
}

function ruleSection(rule) {
  const headingId = `heading-${rule.id}`;
  const section = element("section", {
    id: rule.id,
    className: "rule",
    "aria-labelledby": headingId,
    "data-rule-id": rule.id,
  });
  section.append(
    element(
      "h2",
      { id: headingId },
      element("code", { text: rule.id }),
      element("span", { className: "rule-title", text: `: ${rule.title}` }),
    ),
  );
  const indicator = element("span", {}, rule.indicator);
  if (rule.variants.length) {
    indicator.append(
      "; variants: " + rule.variants.map((v) => `${v.name} (${v.indicator})`).join(", "),
    );
  }
  section.append(
    definitionList([
      ["When it fires", document.createTextNode(rule.trigger)],
      ["Hooks", document.createTextNode(rule.hooks.join(", "))],
      ["For", markdown(rule.scope)],
      ["Reads", markdown(rule.reads)],
      ["Indicator", indicator],
      [
        "Review status",
        document.createTextNode(`${rule.reviewStatus} (card version ${rule.version}, last reviewed ${rule.lastReviewed})`),
      ],
      ["Source on the card", link(rule.source.url, rule.source.label)],
    ]),
  );

  const facts = element("table", { className: "facts" });
  facts.append(
    element("caption", { text: `Facts and thresholds of ${rule.id}` }),
    element(
      "thead",
      {},
      element(
        "tr",
        {},
        ...["Fact or threshold", "Value", "Source", "Note"].map((h) => element("th", { scope: "col", text: h })),
      ),
    ),
  );
  const body = element("tbody");
  for (const fact of rule.facts) {
    const source = fact.source
      ? element("span", {}, link(fact.source.url, fact.source.label), ` (${fact.source.status})`)
      : document.createTextNode(fact.citation);
    body.append(
      element(
        "tr",
        {},
        element("td", { text: fact.name }),
        element("td", { text: fact.value }),
        element("td", {}, source),
        element("td", { text: fact.note }),
      ),
    );
  }
  if (!rule.facts.length) body.append(element("tr", {}, element("td", { colspan: 4, text: "No fact recorded." })));
  facts.append(body);
  section.append(element("h3", { text: "Facts, thresholds and their sources" }), element("div", { className: "table-scroll" }, facts));

  section.append(element("h3", { text: "Card wording" }), wordingBlock("As written", rule));
  for (const variant of rule.variants) {
    section.append(wordingBlock(`Variant ${variant.name} (${variant.indicator})`, variant));
  }
  for (const [profile, note] of Object.entries(rule.profileNotes)) {
    section.append(element("h4", { text: `Added under profile ${profile}` }), markdown(note));
  }
  const reasons = rule.overrideReasons.length
    ? element("ul", {}, ...rule.overrideReasons.map((r) => element("li", { text: `${r.display} (${r.code})` })))
    : document.createTextNode("none");
  const links = rule.links.length
    ? element("ul", {}, ...rule.links.map((l) => element("li", {}, link(l.url, l.label))))
    : document.createTextNode("none");
  section.append(
    definitionList([
      ["Suggestions", suggestionList(rule.suggestions)],
      ["Override reasons", reasons],
      ["Links", links],
    ]),
  );

  const citations = element("ul", { className: "citations" });
  for (const c of rule.citations) {
    citations.append(element("li", {}, link(c.url, c.label), `: ${c.status}; checked ${c.checked}`));
  }
  section.append(element("h3", { text: "Sources" }), citations);
  section.append(element("h3", { text: "Fixture patients that fire it" }), firedBy(rule));
  return section;
}

function overviewRow(rule) {
  return element(
    "tr",
    { "data-rule-id": rule.id },
    element("th", { scope: "row" }, element("a", { href: `#${rule.id}` }, element("code", { text: rule.id }))),
    element("td", { text: rule.hooks.join(", ") }),
    element("td", { text: rule.indicators.join(", ") }),
    element("td", { text: rule.reviewStatus }),
    element("td", { text: String(rule.summaryWords) }),
    element("td", { text: String(rule.detailWords) }),
    element("td", { text: String(rule.firedBy.length) }),
  );
}

function searchable(rule) {
  return [
    rule.id,
    rule.title,
    rule.trigger,
    rule.summary,
    rule.detail,
    rule.reviewStatus,
    rule.hooks.join(" "),
    ...rule.firedBy.map((f) => f.patient),
  ]
    .join(" ")
    .toLowerCase();
}

async function start() {
  const response = await fetch(new URL("console/api/rules", ROOT));
  const data = await response.json();
  const rules = data.rules;
  $("rules-intro").textContent =
    `${rules.length} rules; guideline profile ${data.profile}. "Fixture patients that fire it" are the ` +
    `expectations in fhir_fixtures/expected/ (${data.fixturePatients} fixture patients), at ` +
    `${data.expectedAt}, the tests' date; each hook links to the console, ready to fire it.`;
  const tbody = $("overview").querySelector("tbody");
  const container = $("rules");
  const entries = rules.map((rule) => {
    const row = overviewRow(rule);
    const section = ruleSection(rule);
    tbody.append(row);
    container.append(section);
    return { text: searchable(rule), row, section };
  });
  const filter = $("rule-filter");
  const count = $("rule-count");
  const apply = () => {
    const terms = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const entry of entries) {
      const match = terms.every((t) => entry.text.includes(t));
      entry.row.hidden = !match;
      entry.section.hidden = !match;
      shown += match ? 1 : 0;
    }
    count.textContent = `Showing ${shown} of ${entries.length} rules.`;
  };
  filter.addEventListener("input", apply);
  apply();
  if (window.location.hash) {
    const target = document.getElementById(decodeURIComponent(window.location.hash.slice(1)));
    if (target) target.scrollIntoView();
  }
  document.body.dataset.ready = "true";
}

start().catch((error) => {
  $("rules-intro").textContent = `The rules could not be loaded: ${error.message}`;
});
