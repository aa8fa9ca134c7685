// The doctor's prescription editor: find drugs in the catalogue, write the lines and the
// prescription's details, see the rule checks as you type, save the draft and sign it
// with the authenticator code (the second factor). The API decides everything: a draft
// is created (POST prescriptions) or changed (PATCH prescriptions/{id}) a moment after
// the doctor stops typing, and its answer (or its refusal) carries the rule checks.
//
// What the doctor typed is never lost: the whole form is kept in sessionStorage on every
// change and put back when the page is opened again (or reloaded after a drop).

import "./page.js";
import { ApiError, api, clearError, showError } from "./api.js";
import { config, formatTime, t } from "./i18n.js";
import { renderChecks, statusText, write } from "./rx_common.js";
import { LiveSocket } from "./socket.js";

const $ = (id) => document.getElementById(id);
const consultationId = config.consultation;
const storeKey = `console:rx:${consultationId}`;
const CHECK_DELAY_MS = 600;
const FIELDS = ["dose", "dose_unit", "frequency", "route", "days", "quantity"];

/** The editor's state: the draft's id (once saved), its status, the lines and details. */
let state = {
  prescription: null,
  status: "new",
  lines: [],
  validity_days: "1",
  chronic_reason: "",
  guardian_name: "",
  guardian_relation: "",
  specialist_name: "",
};
let checkTimer = 0;
let saving = null;
let again = false;
/** The drugs of the last refusal for a controlled drug: not sent again automatically. */
let refusedDrugs = "";

// --- keeping what was typed ----------------------------------------------------------------

function keep() {
  try {
    sessionStorage.setItem(storeKey, JSON.stringify(state));
  } catch {
    // storage full or disabled: the page still works, it just cannot survive a reload
  }
}

function restore() {
  try {
    const kept = JSON.parse(sessionStorage.getItem(storeKey) || "null");
    if (kept && Array.isArray(kept.lines)) state = { ...state, ...kept };
    return Boolean(kept);
  } catch {
    return false;
  }
}

// --- the form ------------------------------------------------------------------------------

function field(line, index, name, { type = "text", attrs = {}, label }) {
  const p = document.createElement("p");
  const id = `line-${index}-${name}`;
  const labelEl = document.createElement("label");
  labelEl.htmlFor = id;
  labelEl.textContent = label;
  const input = document.createElement("input");
  input.id = id;
  input.name = name;
  input.type = type;
  input.autocomplete = "off";
  input.value = line[name] ?? "";
  input.dataset.line = String(index);
  for (const [key, value] of Object.entries(attrs)) input.setAttribute(key, value);
  p.append(labelEl, input);
  return p;
}

function renderLines() {
  const box = $("rx-lines");
  box.replaceChildren(
    ...state.lines.map((line, index) => {
      const n = index + 1;
      const set = document.createElement("fieldset");
      set.className = "rx-line";
      set.dataset.code = line.code;
      if (line.controlled) set.dataset.controlled = "true";
      const legend = document.createElement("legend");
      legend.textContent = t("rx_line_legend", { n, name: `${line.name} ${line.specification}` });
      if (line.controlled) {
        const mark = document.createElement("span");
        mark.className = "badge controlled";
        mark.textContent = t("rx_controlled_mark");
        legend.append(" ", mark);
      }
      const grid = document.createElement("div");
      grid.className = "rx-line-fields";
      grid.append(
        field(line, index, "dose", {
          label: t("rx_dose"),
          attrs: { inputmode: "decimal", required: "" },
        }),
        field(line, index, "dose_unit", { label: t("rx_dose_unit"), attrs: { required: "" } }),
        field(line, index, "frequency", {
          label: t("rx_frequency"),
          attrs: { list: "rx-frequencies", required: "" },
        }),
        field(line, index, "route", { label: t("rx_route") }),
        field(line, index, "days", {
          type: "number",
          label: t("rx_days"),
          attrs: { min: "1", max: "3650", required: "" },
        }),
        field(line, index, "quantity", {
          type: "number",
          label: t("rx_quantity", { unit: line.unit || "" }),
          attrs: { min: "1", required: "" },
        }),
      );
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "link";
      remove.dataset.remove = String(index);
      remove.textContent = t("rx_remove_line", { n });
      set.append(legend, grid, remove);
      return set;
    }),
  );
  $("rx-lines-empty").hidden = state.lines.length > 0;
}

function ensureFrequencies() {
  if ($("rx-frequencies")) return;
  const list = document.createElement("datalist");
  list.id = "rx-frequencies";
  for (const value of ["qd", "bid", "tid", "qid", "qn", "qod", "qw", "prn"]) {
    const option = document.createElement("option");
    option.value = value;
    list.append(option);
  }
  document.body.append(list);
}

function renderDetails() {
  $("rx-validity").value = state.validity_days;
  $("rx-chronic").value = state.chronic_reason;
  $("rx-guardian-name").value = state.guardian_name;
  $("rx-guardian-relation").value = state.guardian_relation;
  $("rx-specialist-name").value = state.specialist_name;
}

function showStatus(status, reason = "") {
  state.status = status;
  const badge = $("rx-status");
  badge.textContent = statusText(status);
  badge.dataset.status = status;
  const editable = status === "new" || status === "draft";
  for (const control of document.querySelectorAll(
    "#rx-form input, #rx-form textarea, #rx-form button, #drug-search, #rx-otp, #rx-sign",
  )) {
    control.disabled = !editable;
  }
  const signed = $("rx-signed");
  signed.hidden = editable;
  if (!editable) {
    const lines = [t("rx_signed_notice", { status: statusText(status) })];
    if (reason) lines.push(t("rx_rejected_reason", { reason }));
    signed.textContent = lines.join("\n");
  }
  $("rx-revise").hidden = status !== "review_rejected";
  $("rx-new").hidden = editable || status === "review_rejected";
}

// After a rejection: a new version of the same prescription, as a draft to change.
$("rx-revise").addEventListener("click", async () => {
  clearError($("rx-revise-error"));
  try {
    const answer = await write(`/prescriptions/${state.prescription}/revise`, "POST", {});
    fromPrescription(answer);
    renderLines();
    renderDetails();
    showStatus(answer.status);
    showChecks(answer.checks || []);
    keep();
    $("line-0-dose")?.focus();
  } catch (error) {
    showError($("rx-revise-error"), error);
  }
});

// Signed and sent: start another prescription for the same consultation.
$("rx-new").addEventListener("click", () => {
  state = { ...state, prescription: null, lines: [], chronic_reason: "", validity_days: "1" };
  state.guardian_name = state.guardian_relation = state.specialist_name = "";
  renderLines();
  renderDetails();
  showStatus("new");
  showChecks([]);
  $("rx-saved").textContent = t("rx_not_saved");
  keep();
  $("drug-search").focus();
});

// --- the rule checks -----------------------------------------------------------------------

function showChecks(checks, options = {}) {
  renderChecks($("rx-checks"), checks, options);
  $("rx-checks-state").textContent = checks.length ? "" : t("rx_checks_none");
}

/** The refusal next to the action, with the name of the rule that refused. */
function showRefusal(element, error) {
  showError(element, error);
  const check = error.checks?.find((c) => c.rule === error.code && c.outcome === "error");
  if (check) element.textContent = `${t("rx_refused_rule", { name: check.name })}\n${element.textContent}`;
}

// --- saving --------------------------------------------------------------------------------

function linesComplete() {
  return (
    state.lines.length > 0 &&
    state.lines.every(
      (l) => Number(l.dose) > 0 && l.dose_unit && l.frequency && Number(l.days) >= 1 && Number(l.quantity) >= 1,
    )
  );
}

function body() {
  const person = (name, relation) =>
    name.trim() ? { name: name.trim(), ...(relation?.trim() ? { relation: relation.trim() } : {}) } : null;
  const out = {
    lines: state.lines.map((l) => ({
      drug: l.code,
      dose: String(l.dose).trim(),
      dose_unit: l.dose_unit.trim(),
      frequency: l.frequency.trim(),
      route: (l.route || "").trim(),
      days: Number(l.days),
      quantity: Number(l.quantity),
    })),
    validity_days: Number(state.validity_days) || 1,
    chronic_reason: state.chronic_reason,
  };
  // null clears what a saved draft had (a PATCH changes only the fields it names).
  out.guardian = person(state.guardian_name, state.guardian_relation);
  out.specialist = person(state.specialist_name);
  return out;
}

const drugSet = () => state.lines.map((l) => l.code).join(",");

/** Send the form as the draft (create or change it); show the checks or the refusal. */
async function save({ explicit = false } = {}) {
  if (saving) {
    again = true;
    return saving;
  }
  saving = (async () => {
    const errorBox = $("rx-save-error");
    try {
      if (!linesComplete()) {
        if (explicit) {
          showError(errorBox, new ApiError(400, { code: "validation_error", detail: t("rx_lines_empty") }));
        }
        return false;
      }
      clearError(errorBox);
      $("rx-checks-state").textContent = t("rx_checks_running");
      const answer = state.prescription
        ? await write(`/prescriptions/${state.prescription}`, "PATCH", body())
        : await write("/prescriptions", "POST", { consultation: consultationId, ...body() });
      state.prescription = answer.id;
      refusedDrugs = "";
      keep();
      showChecks(answer.checks || []);
      showStatus(answer.status);
      $("rx-saved").textContent = t("rx_saved_at", { time: formatTime(new Date().toISOString(), { short: true }) });
      return true;
    } catch (error) {
      if (error.checks) showChecks(error.checks, { refusedRule: error.code });
      else $("rx-checks-state").textContent = "";
      if (error.code === "controlled_drug_forbidden") refusedDrugs = drugSet();
      showRefusal(errorBox, error);
      $("rx-saved").textContent = t("rx_not_saved");
      return false;
    } finally {
      saving = null;
      if (again) {
        again = false;
        scheduleCheck();
      }
    }
  })();
  return saving;
}

/** Check (save) a moment after the doctor stops typing. A refused controlled drug is not
 * sent again until the lines change: every refusal is recorded and reported. */
function scheduleCheck() {
  clearTimeout(checkTimer);
  checkTimer = setTimeout(() => {
    if (refusedDrugs && refusedDrugs === drugSet()) {
      $("rx-checks-state").textContent = t("rx_checks_stale");
      return;
    }
    save();
  }, CHECK_DELAY_MS);
}

function changed() {
  $("rx-saved").textContent = t("rx_not_saved");
  keep();
  scheduleCheck();
}

$("rx-lines").addEventListener("input", (event) => {
  const input = event.target;
  const index = Number(input.dataset.line);
  if (!FIELDS.includes(input.name) || !state.lines[index]) return;
  state.lines[index][input.name] = input.value;
  changed();
});

$("rx-lines").addEventListener("click", (event) => {
  const button = event.target.closest("button[data-remove]");
  if (!button) return;
  state.lines.splice(Number(button.dataset.remove), 1);
  renderLines();
  changed();
  $("drug-search").focus();
});

for (const [id, key] of [
  ["rx-validity", "validity_days"],
  ["rx-chronic", "chronic_reason"],
  ["rx-guardian-name", "guardian_name"],
  ["rx-guardian-relation", "guardian_relation"],
  ["rx-specialist-name", "specialist_name"],
]) {
  $(id).addEventListener("input", (event) => {
    state[key] = event.target.value;
    changed();
  });
}

$("rx-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  clearTimeout(checkTimer);
  await save({ explicit: true });
});

// --- the drug search -----------------------------------------------------------------------

let searchTimer = 0;
let searchSeq = 0;

function addDrug(drug) {
  const line = {
    code: drug.code,
    name: drug.generic_name,
    specification: drug.specification,
    unit: drug.unit,
    controlled: drug.controlled,
    dose: "",
    dose_unit: "",
    frequency: "",
    route: drug.route,
    days: "7",
    quantity: "1",
  };
  state.lines.push(line);
  renderLines();
  changed();
  $(`line-${state.lines.length - 1}-dose`).focus();
}

function showResults(drugs) {
  const list = $("drug-results");
  list.replaceChildren(
    ...drugs.map((drug) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "item-button";
      button.dataset.code = drug.code;
      const label = `${drug.generic_name}${drug.trade_name ? `（${drug.trade_name}）` : ""} ${drug.specification}`;
      button.setAttribute("aria-label", t("rx_add_drug", { name: `${drug.code} ${label}` }));
      const code = document.createElement("span");
      code.className = "code";
      code.textContent = drug.code;
      button.append(code, ` ${label} · ${drug.dosage_form} · ${drug.route}`);
      if (drug.controlled) {
        const mark = document.createElement("span");
        mark.className = "badge controlled";
        mark.textContent = t("rx_controlled_mark");
        button.append(" ", mark);
      }
      button.addEventListener("click", () => addDrug(drug));
      li.append(button);
      return li;
    }),
  );
  $("drug-status").textContent = drugs.length ? t("rx_search_count", { count: drugs.length }) : t("rx_search_none");
}

$("drug-search").addEventListener("input", (event) => {
  clearTimeout(searchTimer);
  const query = event.target.value.trim();
  if (!query) {
    $("drug-results").replaceChildren();
    $("drug-status").textContent = "";
    return;
  }
  searchTimer = setTimeout(async () => {
    const seq = ++searchSeq;
    clearError($("drug-error"));
    try {
      const page = await api(`/drugs?q=${encodeURIComponent(query)}&page_size=20`);
      if (seq === searchSeq) showResults(page.results);
    } catch (error) {
      showError($("drug-error"), error);
    }
  }, 250);
});

$("drug-search").addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    event.preventDefault(); // a search field, not a form
    $("drug-results").querySelector("button")?.focus();
  }
});

// --- signing -------------------------------------------------------------------------------

$("rx-sign-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const errorBox = $("rx-sign-error");
  const button = $("rx-sign");
  clearError(errorBox);
  button.disabled = true;
  try {
    // What is on screen is what gets signed: let a save in flight finish, then save
    // the form as it is now.
    if (saving) await saving;
    clearTimeout(checkTimer);
    if (!(await save({ explicit: true }))) {
      const refusal = $("rx-save-error");
      errorBox.textContent = refusal.textContent;
      errorBox.dataset.code = refusal.dataset.code || "";
      errorBox.hidden = refusal.hidden;
      return;
    }
    const otp = $("rx-otp").value.trim();
    const answer = await write(`/prescriptions/${state.prescription}/sign`, "POST", { otp });
    $("rx-otp").value = "";
    showChecks(answer.checks || []);
    showStatus(answer.status);
    keep();
    $("rx-signed").focus?.();
  } catch (error) {
    if (error.checks) showChecks(error.checks, { refusedRule: error.code });
    showRefusal(errorBox, error);
    if (error.code === "totp_invalid" || error.code === "signature_required") {
      $("rx-otp").select();
      $("rx-otp").focus();
    }
  } finally {
    if (state.status === "new" || state.status === "draft") button.disabled = false;
  }
});

// --- live: the review's outcome ------------------------------------------------------------

/** Once signed, the pharmacist's approval or rejection shows here without a reload. */
async function followReview() {
  if (!state.prescription || state.status === "new" || state.status === "draft") return;
  try {
    const saved = await api(`/prescriptions/${state.prescription}`);
    if (saved.status === state.status) return;
    showStatus(saved.status, saved.status === "review_rejected" ? saved.status_reason : "");
    state.reason = saved.status_reason || "";
    keep();
  } catch (error) {
    showError($("rx-page-error"), error);
  }
}

const socket = new LiveSocket({
  ticketPath: "/ws-ticket",
  indicator: $("connection"),
  onOpen: followReview,
  onFrame: (frame) => {
    if (frame.type === "prescription.changed" && frame.prescription?.id === state.prescription) {
      followReview();
    }
  },
});

// --- start ---------------------------------------------------------------------------------

async function loadConsultation() {
  try {
    const consultation = await api(`/consultations/${consultationId}`);
    $("rx-patient").textContent = t("rx_patient", { name: consultation.patient?.name ?? "" });
  } catch (error) {
    showError($("rx-page-error"), error);
  }
}

/** The prescription the doctor is working on for this consultation (another tab, another
 * day): the newest one still a draft, signed, under review or rejected by review. */
const IN_HAND = new Set(["draft", "signed", "under_review", "review_rejected"]);

async function findInHand() {
  try {
    const page = await api("/prescriptions?page_size=100");
    const found = page.results.find((p) => p.consultation === consultationId);
    if (!found || !IN_HAND.has(found.status)) return;
    state.prescription = found.id;
    state.status = found.status;
    state.reason = found.status_reason || "";
    fromPrescription(found);
  } catch (error) {
    showError($("rx-page-error"), error);
  }
}

function fromPrescription(p) {
  state.lines = p.lines.map((l) => ({
    code: l.drug_code,
    name: l.drug_name,
    specification: l.specification,
    unit: l.unit,
    controlled: false,
    dose: String(Number(l.dose)),
    dose_unit: l.dose_unit,
    frequency: l.frequency,
    route: l.route,
    days: String(l.days),
    quantity: String(l.quantity),
  }));
  state.validity_days = String(p.validity_days);
  state.chronic_reason = p.chronic_reason || "";
  state.guardian_name = p.guardian?.name || "";
  state.guardian_relation = p.guardian?.relation || "";
  state.specialist_name = p.specialist?.name || "";
}

(async () => {
  ensureFrequencies();
  loadConsultation();
  const kept = restore();
  if (state.prescription) {
    // The saved draft's status and checks; what was typed since is kept as typed.
    try {
      const saved = await api(`/prescriptions/${state.prescription}`);
      if (saved.status !== "draft") fromPrescription(saved);
      showChecks(saved.checks || []);
      state.status = saved.status;
      state.reason = saved.status_reason || "";
    } catch (error) {
      if (error.status === 404) state.prescription = null;
      else showError($("rx-page-error"), error);
    }
  } else if (!kept || state.lines.length === 0) {
    await findInHand();
    if (state.prescription && state.status !== "draft") {
      const saved = await api(`/prescriptions/${state.prescription}`).catch(() => null);
      if (saved) showChecks(saved.checks || []);
    }
  }
  renderLines();
  renderDetails();
  showStatus(state.status, state.status === "review_rejected" ? state.reason : "");
  keep();
  if (state.status === "draft" || (state.status === "new" && linesComplete())) scheduleCheck();
  if (!$("drug-search").disabled) $("drug-search").focus();
  socket.start();
})();
