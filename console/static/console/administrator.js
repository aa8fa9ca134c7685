// The hospital administrator's console: practitioners with their filing and signing
// certificate, the regulator outbox (pending records, dead letters and their replay), the
// audit chain check and the payment reconciliations, through /api/console/v1/.

import "./page.js";
import { api, apiList, clearError, showError } from "./api.js";
import { RECORD_TYPES } from "./record_types.js";
import { formatTime, t } from "./i18n.js";

const $ = (id) => document.getElementById(id);

// The words of the API's values, one key each (a value without one is shown as it is).
const KINDS = { doctor: "ov_kind_doctor", pharmacist: "ov_kind_pharmacist" };
const FILINGS = {
  pending: "ov_filing_pending",
  filed: "ov_filing_filed",
  suspended: "ov_filing_suspended",
  revoked: "ov_filing_revoked",
};
const CERTIFICATES = {
  valid: "ov_cert_valid",
  expired: "ov_cert_expired",
  revoked: "ov_cert_revoked",
  not_yet_valid: "ov_cert_not_yet_valid",
  none: "ov_cert_none",
};
const CHANNELS = {
  wechat: "ov_channel_wechat",
  alipay: "ov_channel_alipay",
  insurance: "ov_channel_insurance",
};
const named = (map, code, vars) => (map[code] ? t(map[code], vars) : code);

function cell(text, attributes = {}) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  for (const [key, value] of Object.entries(attributes)) td.setAttribute(key, value);
  return td;
}

function fill(tableId, rows, emptyId, countId) {
  const table = $(tableId);
  table.tBodies[0].replaceChildren(...rows);
  table.setAttribute("aria-busy", "false");
  table.hidden = rows.length === 0;
  $(emptyId).hidden = rows.length > 0;
  if (countId) $(countId).textContent = String(rows.length);
}

const day = (iso) => (iso ? iso.slice(0, 10) : t("ov_none"));

// --- practitioners ------------------------------------------------------------------------

function certificateText(certificate) {
  const date = certificate.not_after ? formatTime(certificate.not_after) : "";
  return named(CERTIFICATES, certificate.status, { date });
}

async function loadPractitioners() {
  try {
    const practitioners = await apiList("/administration/practitioners");
    fill(
      "practitioners",
      practitioners.map((p) => {
        const tr = document.createElement("tr");
        tr.dataset.id = p.id;
        const name = document.createElement("th");
        name.scope = "row";
        name.textContent = p.name;
        tr.append(
          name,
          cell(named(KINDS, p.kind)),
          cell(p.department),
          cell(p.practice_certificate_number),
          cell(named(FILINGS, p.filing_status), {
            "data-status": p.filing_status,
            class: `ov-status-${p.filing_status}`,
          }),
          cell(certificateText(p.certificate), {
            "data-status": p.certificate.status,
            class: `ov-cert-${p.certificate.status}`,
          }),
          cell(day(p.licence_valid_until)),
        );
        return tr;
      }),
      "practitioners-empty",
      "practitioners-count",
    );
    clearError($("practitioners-error"));
  } catch (error) {
    showError($("practitioners-error"), error);
  }
}

// --- the regulator outbox -------------------------------------------------------------------

function recordCells(record) {
  const type = document.createElement("th");
  type.scope = "row";
  const name = document.createElement("span");
  name.textContent = named(RECORD_TYPES, record.record_type);
  const code = document.createElement("code");
  code.textContent = record.record_type;
  type.append(name, " ", code);
  const reason =
    record.status === "dead"
      ? `${record.dead_code}: ${record.dead_message}`
      : record.last_error || t("ov_none");
  return [type, cell(formatTime(record.created_at)), cell(String(record.attempts)), cell(reason)];
}

async function replay(record, button) {
  button.disabled = true;
  clearError($("dead-error"));
  try {
    await api(`/administration/outbox/${record.record_id}/replay`, { method: "POST" });
    $("outbox-status").textContent = t("ov_replayed", { type: named(RECORD_TYPES, record.record_type) });
    await loadOutbox();
    $("outbox-status").focus(); // the replayed row (and its button) is gone
  } catch (error) {
    button.disabled = false;
    showError($("dead-error"), error);
  }
}

async function loadOutbox() {
  try {
    const [dead, pending] = await Promise.all([
      apiList("/administration/outbox?status=dead"),
      apiList("/administration/outbox?status=pending"),
    ]);
    fill(
      "dead",
      dead.map((record) => {
        const tr = document.createElement("tr");
        tr.dataset.recordId = record.record_id;
        const action = document.createElement("td");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "ov-replay";
        button.textContent = t("ov_replay");
        button.setAttribute(
          "aria-label",
          t("ov_replay_label", {
            type: named(RECORD_TYPES, record.record_type),
            time: formatTime(record.created_at),
          }),
        );
        button.addEventListener("click", () => replay(record, button));
        action.append(button);
        tr.append(...recordCells(record), action);
        return tr;
      }),
      "dead-empty",
      "dead-count",
    );
    fill(
      "pending",
      pending.map((record) => {
        const tr = document.createElement("tr");
        tr.dataset.recordId = record.record_id;
        tr.append(...recordCells(record));
        return tr;
      }),
      "pending-empty",
      "pending-count",
    );
    clearError($("outbox-error"));
  } catch (error) {
    showError($("outbox-error"), error);
  }
}

$("outbox-refresh").addEventListener("click", loadOutbox);

// --- the audit chain --------------------------------------------------------------------------

$("audit-run").addEventListener("click", async () => {
  const button = $("audit-run");
  const result = $("audit-result");
  button.disabled = true;
  clearError($("audit-error"));
  result.dataset.state = "running";
  result.textContent = t("ov_audit_running");
  try {
    const report = await api("/administration/audit-chain/verify", { method: "POST" });
    result.dataset.state = report.ok ? "ok" : "broken";
    result.textContent = report.ok
      ? t("ov_audit_ok", {
          checked: report.checked,
          last: report.last_seq,
          time: formatTime(report.checked_at),
        })
      : t("ov_audit_broken", {
          seq: report.first_break.seq,
          reason: report.first_break.reason,
          checked: report.checked,
        });
  } catch (error) {
    result.dataset.state = "";
    result.textContent = "";
    showError($("audit-error"), error);
  } finally {
    button.disabled = false;
  }
});

// --- payment reconciliations -------------------------------------------------------------------

function reconRow(run) {
  const tr = document.createElement("tr");
  tr.dataset.id = run.id;
  const channel = document.createElement("th");
  channel.scope = "row";
  channel.textContent = named(CHANNELS, run.channel);
  tr.append(
    channel,
    cell(run.bill_date),
    cell(formatTime(run.ran_at)),
    cell(`${run.bill_rows} / ${run.ledger_rows}`),
    cell(run.clean ? t("ov_recon_clean") : t("ov_recon_differences", { n: run.differences.length }), {
      "data-clean": String(run.clean),
    }),
  );
  return tr;
}

async function loadReconciliations() {
  try {
    const runs = await apiList("/payments/reconciliations", { pages: 1 });
    fill("recons", runs.map(reconRow), "recons-empty");
  } catch (error) {
    showError($("recon-error"), error);
  }
}

$("recon-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("recon-run");
  button.disabled = true;
  clearError($("recon-error"));
  try {
    await api("/payments/reconciliations", { method: "POST", body: { date: $("recon-date").value } });
    await loadReconciliations();
  } catch (error) {
    showError($("recon-error"), error);
  } finally {
    button.disabled = false;
  }
});

// Yesterday (Beijing time) is the usual bill to reconcile.
$("recon-date").value = new Date(Date.now() + 8 * 3600 * 1000 - 86400 * 1000).toISOString().slice(0, 10);

loadPractitioners();
loadOutbox();
loadReconciliations();
