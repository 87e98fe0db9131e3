// The console's hook page: build a hook request, post it to the service's own hook endpoint as
// an EHR does, render the cards as an EHR does, and send real feedback.
//
// Every call goes to this service (same origin): /console/api/* for the fixture patients and the
// request built from them, /cds-services for discovery, /cds-services/{id} for the hook call and
// /cds-services/{id}/feedback for feedback. Text from the service is put in the page as text
// (textContent); a card's markdown detail goes through the escaping renderer of markdown.js.

import { renderMarkdown } from "./markdown.js";

const ROOT = new URL(document.body.dataset.root || "./", window.location.href);
const HOOK_ORDERS = new Set(["order-select", "order-sign"]);
const INDICATOR_NAMES = { critical: "Critical", warning: "Warning", info: "Info" };
const WEB_URL = /^https?:\/\//i;

const $ = (id) => document.getElementById(id);

const state = {
  fixtures: { patients: [], orderLibrary: [], expectedAt: "" },
  services: [],
  orders: [], // { key, label, from, own, selected }
  lastRequestText: "",
  nextId: 1,
};

function serviceUrl(path) {
  return new URL(path, ROOT).toString();
}

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

function uniqueId(prefix) {
  state.nextId += 1;
  return `${prefix}-${state.nextId}`;
}

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function elapsed(started) {
  return `${Math.round(performance.now() - started)} ms`;
}

// ---------------------------------------------------------------------------------------------
// The form

function chosen(name) {
  const checked = document.querySelector(`input[name="${name}"]:checked`);
  return checked ? checked.value : "";
}

function currentFixture() {
  return state.fixtures.patients.find((p) => p.name === $("fixture").value) || null;
}

function showError(message) {
  $("form-error").textContent = message;
}

function updateForm() {
  const source = chosen("source");
  const hook = chosen("hook");
  $("source-fixture").hidden = source !== "fixture";
  $("source-fhir").hidden = source !== "fhir";
  $("source-paste").hidden = source !== "paste";
  $("hook-fieldset").hidden = source === "paste";
  const orders = source !== "paste" && HOOK_ORDERS.has(hook);
  $("orders-fieldset").hidden = !orders;
  $("orders-legend").textContent =
    hook === "order-select" ? "Draft orders: tick the selected ones" : "Draft orders: tick the ones to sign";
  $("orders-help").textContent =
    hook === "order-select"
      ? "Every order listed is a draft in the order basket (context.draftOrders); tick the ones " +
        "just selected (context.selections)."
      : "Tick the orders being signed (context.draftOrders); the others are left out.";
  if (orders) renderOrders();
  updateExpected();
}

function updateExpected() {
  const fixture = currentFixture();
  const hint = $("fixture-expected");
  if (!fixture) {
    hint.textContent = state.fixtures.patients.length
      ? ""
      : "No fixture patients were found (fhir_fixtures/ is not beside this installation).";
    return;
  }
  const hook = chosen("hook");
  const expected = fixture.expected[hook];
  const drafts = fixture.draftOrders.length;
  let text = `Patient id ${fixture.patientId}: ${fixture.label}; ${drafts} draft order${drafts === 1 ? "" : "s"}. `;
  if (expected === undefined) {
    text += `No expectation is recorded for ${hook}.`;
  } else {
    text +=
      `The tests expect on ${hook}, at ${state.fixtures.expectedAt}: ` +
      (expected.length ? expected.join(", ") : "no card") +
      ". The service runs on today's date, so dated rules may differ.";
  }
  hint.textContent = text;
}

function resetOrders() {
  const fixture = chosen("source") === "fixture" ? currentFixture() : null;
  const lent = state.orders.filter((o) => !o.own);
  const own = fixture
    ? fixture.draftOrders.map((o) => ({ ...o, own: true, selected: true }))
    : [];
  state.orders = [...own, ...lent.filter((o) => !own.some((x) => x.key === o.key))];
  renderOrders();
}

function renderOrders() {
  const list = $("order-list");
  list.replaceChildren();
  for (const order of state.orders) {
    const id = uniqueId("order");
    const box = element("input", { type: "checkbox", id, value: order.key });
    box.checked = order.selected;
    box.addEventListener("change", () => {
      order.selected = box.checked;
    });
    const origin = order.own ? "this patient's draft" : `from fixture ${order.from}`;
    const label = element(
      "label",
      { for: id },
      element("span", { text: order.label }),
      element("span", { className: "order-origin", text: ` (${order.resourceType}, ${origin})` }),
    );
    const item = element("li", {}, box, " ", label);
    if (!order.own) {
      const remove = element("button", {
        type: "button",
        className: "link-button",
        "aria-label": `Remove order: ${order.label}`,
        text: "Remove",
      });
      remove.addEventListener("click", () => {
        state.orders = state.orders.filter((o) => o !== order);
        renderOrders();
        $("order-library").focus();
      });
      item.append(" ", remove);
    }
    list.append(item);
  }
  $("orders-empty").hidden = state.orders.length > 0;
}

function addOrder() {
  const key = $("order-library").value;
  const order = state.fixtures.orderLibrary.find((o) => o.key === key);
  if (!order) return;
  const existing = state.orders.find((o) => o.key === key);
  if (existing) {
    existing.selected = true;
  } else {
    state.orders.push({ ...order, own: false, selected: true });
  }
  renderOrders();
  const box = document.querySelector(`#order-list input[value="${CSS.escape(key)}"]`);
  if (box) box.focus();
}

function fillSelects() {
  const fixture = $("fixture");
  fixture.replaceChildren();
  for (const patient of state.fixtures.patients) {
    fixture.append(element("option", { value: patient.name, text: `${patient.name} (${patient.label})` }));
  }
  const library = $("order-library");
  library.replaceChildren();
  const groups = new Map();
  for (const order of state.fixtures.orderLibrary) {
    if (!groups.has(order.resourceType)) {
      const group = element("optgroup", { label: order.resourceType });
      groups.set(order.resourceType, group);
      library.append(group);
    }
    groups.get(order.resourceType).append(
      element("option", { value: order.key, text: `${order.label} (from ${order.from})` }),
    );
  }
  const pasted = $("pasted-service");
  for (const service of state.services) {
    pasted.append(element("option", { value: service.id, text: `${service.id} (${service.hook})` }));
  }
}

function applyQuery() {
  const query = new URLSearchParams(window.location.search);
  const patient = query.get("patient");
  if (patient && state.fixtures.patients.some((p) => p.name === patient)) {
    $("fixture").value = patient;
  }
  const hook = query.get("hook");
  const radio = hook && document.querySelector(`input[name="hook"][value="${CSS.escape(hook)}"]`);
  if (radio) radio.checked = true;
}

// ---------------------------------------------------------------------------------------------
// Sending the hook

async function buildRequest() {
  const source = chosen("source");
  const hook = chosen("hook");
  if (source === "paste") {
    const text = $("pasted").value;
    if (!text.trim()) throw new Error("Paste a hook request first.");
    let hookOfRequest = null;
    try {
      hookOfRequest = JSON.parse(text).hook;
    } catch {
      hookOfRequest = null;
    }
    const byHook = state.services.find((s) => s.hook === hookOfRequest);
    const serviceId = $("pasted-service").value || (byHook && byHook.id);
    if (!serviceId) {
      throw new Error(
        "The request's hook is not one this service answers: choose the service to send it to.",
      );
    }
    return { serviceId, body: text, shown: pretty(text) };
  }
  const spec = { hook, orders: [] };
  if (source === "fixture") {
    if (!$("fixture").value) throw new Error("Choose a fixture patient.");
    spec.patient = $("fixture").value;
  } else {
    const base = $("fhir-base").value.trim();
    const patientId = $("fhir-patient").value.trim();
    if (!base) throw new Error("Give the FHIR server base URL.");
    if (!patientId) throw new Error("Give the patient id on the FHIR server.");
    spec.fhirServer = base;
    spec.patientId = patientId;
  }
  if (HOOK_ORDERS.has(hook)) {
    spec.orders = state.orders.map((o) => ({ key: o.key, selected: o.selected }));
    if (hook === "order-select" && !state.orders.some((o) => o.selected)) {
      throw new Error("order-select needs at least one selected draft order: tick one, or add one.");
    }
  }
  const response = await fetch(serviceUrl("console/api/request"), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(spec),
  });
  const answer = await response.json().catch(() => null);
  if (!response.ok || !answer) {
    const why = answer && answer.issue ? answer.issue.map((i) => i.diagnostics).join("; ") : response.status;
    throw new Error(`The request could not be built: ${why}`);
  }
  const request = answer.request;
  const token = source === "fhir" ? $("fhir-token").value.trim() : "";
  let shown = request;
  if (token) {
    const authorization = {
      access_token: token,
      token_type: "Bearer",
      expires_in: 3600,
      scope: "patient/*.read",
      subject: "als-cds-console",
    };
    request.fhirAuthorization = authorization;
    shown = { ...request, fhirAuthorization: { ...authorization, access_token: "(masked)" } };
  }
  return { serviceId: answer.service, body: JSON.stringify(request), shown: JSON.stringify(shown, null, 2) };
}

async function sendHook(event) {
  event.preventDefault();
  showError("");
  const button = $("send");
  const status = $("call-status");
  let built;
  try {
    built = await buildRequest();
  } catch (error) {
    showError(error.message);
    return;
  }
  button.disabled = true;
  $("cards").setAttribute("aria-busy", "true");
  status.textContent = `Sending to ${built.serviceId}…`;
  const started = performance.now();
  let response;
  let text;
  try {
    response = await fetch(serviceUrl(`cds-services/${encodeURIComponent(built.serviceId)}`), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: built.body,
    });
    text = await response.text();
  } catch (error) {
    status.textContent = `The call failed before the service answered: ${error.message}`;
    button.disabled = false;
    $("cards").removeAttribute("aria-busy");
    return;
  }
  const took = elapsed(started);
  button.disabled = false;
  $("cards").removeAttribute("aria-busy");
  state.lastRequestText = built.shown;
  $("request-json").textContent = built.shown;
  $("response-json").textContent = pretty(text);
  $("edit-request").disabled = false;
  const requestId = response.headers.get("X-Request-Id");
  $("exchange-summary").textContent =
    `POST /cds-services/${built.serviceId}: ${response.status} in ${took}` +
    (requestId ? ` (request id ${requestId}, as in the service's log)` : "");
  let answer = null;
  try {
    answer = JSON.parse(text);
  } catch {
    answer = null;
  }
  showAnswer(built.serviceId, response.status, answer, took);
}

function showAnswer(serviceId, status, answer, took) {
  const cards = $("cards");
  const line = $("call-status");
  cards.replaceChildren();
  if (status === 200 && answer && Array.isArray(answer.cards)) {
    const count = answer.cards.length;
    line.textContent =
      `${count ? count : "No"} card${count === 1 ? "" : "s"} from ${serviceId}, ` +
      `answered ${status} in ${took}.`;
    if (!count) {
      cards.append(element("p", { className: "no-cards", text: "No cards: nothing to flag on this hook." }));
    }
    answer.cards.forEach((card, index) => cards.append(renderCard(card, index, serviceId)));
    return;
  }
  const issues = answer && Array.isArray(answer.issue) ? answer.issue : [];
  line.textContent = `The service answered ${status} in ${took}: no cards.`;
  const box = element(
    "div",
    { className: "error-answer" },
    element("h3", { text: `${status}: what the service said` }),
  );
  const list = element("ul");
  for (const issue of issues) {
    const where = Array.isArray(issue.expression) ? ` (at ${issue.expression.join(", ")})` : "";
    list.append(element("li", { text: `${issue.diagnostics || issue.code || "error"}${where}` }));
  }
  if (!issues.length) list.append(element("li", { text: "No OperationOutcome: see the response below." }));
  box.append(list);
  cards.append(box);
}

// ---------------------------------------------------------------------------------------------
// A card, as an EHR shows it

function renderCard(card, index, serviceId) {
  const indicator = INDICATOR_NAMES[card.indicator] ? card.indicator : "info";
  const headingId = `card-${index}-summary`;
  const ruleId = card.source && card.source.topic ? card.source.topic.code : "";
  const article = element("article", {
    className: `card indicator-${indicator}`,
    "aria-labelledby": headingId,
    "data-rule-id": ruleId,
    "data-indicator": card.indicator,
  });
  article.append(
    element(
      "p",
      { className: "indicator-line" },
      element("span", { className: `badge badge-${indicator}`, text: INDICATOR_NAMES[indicator] || card.indicator }),
      ruleId ? element("span", { className: "rule-id", text: ` rule ${ruleId}` }) : null,
    ),
    element("h3", { id: headingId, className: "card-summary", text: card.summary }),
  );
  if (card.detail) {
    const detail = element("div", { className: "card-detail" });
    detail.innerHTML = renderMarkdown(card.detail);
    article.append(detail);
  }
  if (card.source) {
    const source = element("p", { className: "card-source" }, "Source: ");
    if (card.source.url && WEB_URL.test(card.source.url)) {
      source.append(
        element("a", { href: card.source.url, target: "_blank", rel: "noopener noreferrer", text: card.source.label }),
      );
    } else {
      source.append(card.source.label || "");
    }
    article.append(source);
  }
  const feedbackStatus = element("p", { className: "feedback-status", role: "status", "aria-live": "polite" });
  const canFeedback = Boolean(card.uuid);

  if (Array.isArray(card.suggestions) && card.suggestions.length) {
    const group = element("div", { className: "suggestions", role: "group", "aria-label": "Suggestions" });
    for (const suggestion of card.suggestions) {
      const button = element("button", {
        type: "button",
        className: suggestion.isRecommended ? "suggestion recommended" : "suggestion",
        text: suggestion.label,
      });
      const wrap = element("div", { className: "suggestion-row" }, button);
      if (suggestion.isRecommended) wrap.append(element("span", { className: "recommended-tag", text: " Recommended" }));
      const actions = element("ul", { className: "suggestion-actions" });
      for (const action of suggestion.actions || []) {
        actions.append(element("li", { text: `${action.type}: ${action.description}` }));
      }
      if (actions.childElementCount) wrap.append(actions);
      if (!canFeedback || !suggestion.uuid) {
        button.disabled = true;
        button.title = "No uuid on the card or suggestion: no feedback can name it";
      }
      button.addEventListener("click", async () => {
        button.disabled = true;
        const sent = await sendFeedback(
          serviceId,
          card,
          { outcome: "accepted", acceptedSuggestions: [{ id: suggestion.uuid }] },
          `Accepted "${suggestion.label}"`,
          feedbackStatus,
        );
        if (sent) {
          button.textContent = `Accepted: ${suggestion.label}`;
          article.classList.add("accepted");
        } else {
          button.disabled = false;
        }
      });
      group.append(wrap);
    }
    article.append(element("h4", { className: "card-subheading", text: "Suggestions" }), group);
  }

  if (Array.isArray(card.links) && card.links.length) {
    const list = element("ul", { className: "card-links" });
    for (const link of card.links) {
      if (link.type === "absolute" && WEB_URL.test(link.url)) {
        list.append(
          element("li", {}, element("a", { href: link.url, target: "_blank", rel: "noopener noreferrer", text: link.label })),
        );
      } else {
        list.append(element("li", { text: `${link.label} (SMART app: ${link.url})` }));
      }
    }
    article.append(element("h4", { className: "card-subheading", text: "Links" }), list);
  }

  article.append(renderOverride(card, serviceId, feedbackStatus, canFeedback, article), feedbackStatus);
  return article;
}

function renderOverride(card, serviceId, feedbackStatus, canFeedback, article) {
  const reasons = Array.isArray(card.overrideReasons) ? card.overrideReasons : [];
  const panelId = uniqueId("override");
  const selectId = uniqueId("reason");
  const commentId = uniqueId("comment");
  const toggle = element("button", {
    type: "button",
    className: "override-toggle",
    "aria-expanded": "false",
    "aria-controls": panelId,
    text: "Override…",
  });
  const select = element("select", { id: selectId });
  if (!reasons.length) select.append(element("option", { value: "", text: "No reason offered by this card" }));
  reasons.forEach((reason, n) => select.append(element("option", { value: String(n), text: reason.display })));
  const comment = element("input", { id: commentId, type: "text", autocomplete: "off" });
  const send = element("button", { type: "button", text: "Send override" });
  const panel = element(
    "div",
    { id: panelId, className: "override-panel", hidden: true },
    element("label", { for: selectId, text: "Reason for overriding" }),
    select,
    element("label", { for: commentId, text: "Comment (optional)" }),
    comment,
    send,
  );
  if (!canFeedback) {
    toggle.disabled = true;
    toggle.title = "No uuid on the card: no feedback can name it";
  }
  toggle.addEventListener("click", () => {
    const open = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", String(open));
    panel.hidden = !open;
    if (open) select.focus();
  });
  send.addEventListener("click", async () => {
    const reason = reasons[Number(select.value)];
    const item = { outcome: "overridden" };
    const override = {};
    if (reason) override.reason = { code: reason.code, system: reason.system, display: reason.display };
    if (comment.value.trim()) override.userComment = comment.value.trim();
    if (Object.keys(override).length) item.overrideReason = override;
    send.disabled = true;
    const sent = await sendFeedback(
      serviceId,
      card,
      item,
      `Overrode the card${reason ? ` ("${reason.display}")` : ""}`,
      feedbackStatus,
    );
    if (sent) {
      article.classList.add("overridden");
      toggle.textContent = `Overridden${reason ? `: ${reason.display}` : ""}`;
      toggle.disabled = true;
      toggle.setAttribute("aria-expanded", "false");
      panel.hidden = true;
      toggle.focus();
    } else {
      send.disabled = false;
    }
  });
  return element("div", { className: "override" }, toggle, panel);
}

// ---------------------------------------------------------------------------------------------
// Feedback

async function sendFeedback(serviceId, card, item, what, statusLine) {
  const body = { feedback: [{ card: card.uuid, ...item, outcomeTimestamp: new Date().toISOString() }] };
  const path = `cds-services/${encodeURIComponent(serviceId)}/feedback`;
  const started = performance.now();
  let status = 0;
  let text = "";
  try {
    const response = await fetch(serviceUrl(path), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    status = response.status;
    text = await response.text();
  } catch (error) {
    statusLine.textContent = `${what}: the feedback call failed (${error.message}).`;
    return false;
  }
  const took = elapsed(started);
  let answer = null;
  try {
    answer = JSON.parse(text);
  } catch {
    answer = null;
  }
  const counts =
    answer && typeof answer.stored === "number"
      ? `stored ${answer.stored}, duplicates ${answer.duplicates}, unknown cards ${answer.unknownCards}`
      : text.slice(0, 200);
  statusLine.textContent = `${what}: the service answered ${status} (${counts}) in ${took}.`;
  $("feedback-none").hidden = true;
  const entry = element(
    "li",
    { "data-status": status },
    element("p", { text: `${what} on "${card.summary}": POST /${path}, ${status} (${counts}) in ${took}.` }),
    element(
      "details",
      {},
      element("summary", { text: "Feedback request and response" }),
      element("pre", { className: "json", text: JSON.stringify(body, null, 2) }),
      element("pre", { className: "json", text: pretty(text) }),
    ),
  );
  $("feedback-log").append(entry);
  return status === 200;
}

// ---------------------------------------------------------------------------------------------
// Start

function editRequest() {
  $("pasted").value = state.lastRequestText;
  document.querySelector('input[name="source"][value="paste"]').checked = true;
  updateForm();
  $("pasted").focus();
  if (state.lastRequestText.includes('"(masked)"')) {
    showError("The access token is masked in this copy: put it back in fhirAuthorization before sending.");
  }
}

async function start() {
  const [fixtures, discovery] = await Promise.all([
    fetch(serviceUrl("console/api/fixtures")).then((r) => r.json()),
    fetch(serviceUrl("cds-services")).then((r) => r.json()),
  ]);
  state.fixtures = fixtures;
  state.services = discovery.services || [];
  fillSelects();
  applyQuery();
  resetOrders();
  updateForm();
  for (const radio of document.querySelectorAll('input[name="source"]')) {
    radio.addEventListener("change", () => {
      resetOrders();
      updateForm();
    });
  }
  for (const radio of document.querySelectorAll('input[name="hook"]')) {
    radio.addEventListener("change", updateForm);
  }
  $("fixture").addEventListener("change", () => {
    state.orders = state.orders.filter((o) => !o.own);
    resetOrders();
    updateForm();
  });
  $("add-order").addEventListener("click", addOrder);
  $("edit-request").addEventListener("click", editRequest);
  $("hook-form").addEventListener("submit", sendHook);
  document.body.dataset.ready = "true";
}

start().catch((error) => {
  showError(`The console could not load its data: ${error.message}`);
});
