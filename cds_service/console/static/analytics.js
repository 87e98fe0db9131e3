// The rule analytics page: the figures of GET /console/api/analytics (the same answer as
// GET /analytics/rules) as a table, and its CSV export. Text goes into the page as text.

const ROOT = new URL(document.body.dataset.root || "./", window.location.href);
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

// The form's values as the query string (empty fields left out: the service's defaults).
function query() {
  const params = new URLSearchParams();
  for (const name of ["since", "until", "period", "rule"]) {
    const value = $(name).value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

// The breakdown under a count; nothing when there is none (the count says 0).
function list(items) {
  if (!items.length) return null;
  const ul = element("ul", { className: "figure-list" });
  for (const text of items) ul.append(element("li", { text }));
  return ul;
}

function day(instant) {
  return instant.slice(0, 10);
}

function periodText(row) {
  // The end is excluded: show the last day included.
  const end = new Date(new Date(row.periodEnd).getTime() - 1).toISOString().slice(0, 10);
  return day(row.periodStart) === end ? end : `${day(row.periodStart)} to ${end}`;
}

function figureRow(row) {
  const reasons = row.overriddenByReason.map((r) => {
    const code = r.code === null ? "" : ` [${r.system ? `${r.system}|` : ""}${r.code}]`;
    const standard = r.standardCode ? ` (standard: ${r.standardCode})` : "";
    return `${r.count} × ${r.display}${code}${standard}`;
  });
  const suggestions = row.acceptedBySuggestion.map((s) => `${s.count} × ${s.suggestion}`);
  const suppressed = Object.entries(row.suppressedByReason).map(([why, n]) => `${n} × ${why}`);
  const rate = row.acceptanceRate === null ? "n/a" : `${Math.round(row.acceptanceRate * 1000) / 10} %`;
  return element(
    "tr",
    { "data-rule-id": row.ruleId, "data-period-start": row.periodStart },
    element("th", { scope: "row", text: row.ruleId }),
    element("td", { text: periodText(row) }),
    element("td", { className: "shown", text: String(row.shown) }),
    element("td", { className: "accepted-cards", text: String(row.acceptedCards) }),
    element("td", { className: "acceptance-rate", text: rate }),
    element("td", { className: "accepted-suggestions" }, list(suggestions) || "none"),
    element("td", { className: "overridden" }, `${row.overridden}`, list(reasons)),
    element("td", { className: "snoozed", text: String(row.snoozed) }),
    element("td", { className: "suppressed" }, `${row.suppressed}`, list(suppressed)),
  );
}

async function show() {
  const params = query();
  const csv = new URLSearchParams(params);
  csv.set("format", "csv");
  $("csv-link").href = new URL(`console/api/analytics?${csv}`, ROOT).toString();
  const response = await fetch(new URL(`console/api/analytics?${params}`, ROOT), {
    headers: { Accept: "application/json" },
  });
  const answer = await response.json();
  const tbody = $("figures").querySelector("tbody");
  tbody.replaceChildren();
  if (!response.ok) {
    const issues = (answer.issue || []).map((i) => `${i.diagnostics}${i.expression ? ` (${i.expression.join(", ")})` : ""}`);
    $("analytics-error").textContent = `The service answered ${response.status}: ${issues.join("; ")}`;
    $("analytics-error").hidden = false;
    $("analytics-status").textContent = "";
    return;
  }
  $("analytics-error").hidden = true;
  for (const row of answer.rows) tbody.append(figureRow(row));
  const rules = new Set(answer.rows.map((r) => r.ruleId)).size;
  $("analytics-status").textContent =
    `${answer.rows.length} rows (${rules} rules), per ${answer.period}, from ${answer.since} to ${answer.until} (${answer.periodsIn}).`;
}

async function start() {
  $("analytics-form").addEventListener("submit", (event) => {
    event.preventDefault();
    show().catch((error) => {
      $("analytics-error").textContent = `The figures could not be loaded: ${error.message}`;
      $("analytics-error").hidden = false;
    });
  });
  await show();
  document.body.dataset.ready = "true";
}

start().catch((error) => {
  $("analytics-error").textContent = `The figures could not be loaded: ${error.message}`;
  $("analytics-error").hidden = false;
});
