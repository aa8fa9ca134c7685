// The pharmacist's review of one prescription: its lines, the rule checks and the
// verification of the doctor's signature as the API computes it now (GET
// prescriptions/{id}: `checks`, `verification`), then approve with the pharmacist's
// authenticator code (the countersignature) or reject with a reason.

import "./page.js";
import { api, clearError, showError } from "./api.js";
import { config, formatTime, t } from "./i18n.js";
import { renderChecks, signerText, statusText, write } from "./rx_common.js";

const $ = (id) => document.getElementById(id);
const path = `/prescriptions/${config.prescription}`;
const reasonKey = `console:rx-reject:${config.prescription}`;

function renderVerification(verification) {
  const box = $("rx-verification");
  const signers = $("rx-signers");
  signers.replaceChildren();
  if (!verification) {
    box.textContent = t("rx_verification_none");
    box.dataset.valid = "none";
    return;
  }
  box.dataset.valid = String(Boolean(verification.valid));
  if (!verification.valid) {
    box.textContent = t("rx_verification_invalid", {
      reason: verification.reason || "",
      code: verification.code || "",
    });
    return;
  }
  box.textContent = t("rx_verification_valid");
  for (const role of ["doctor", "pharmacist"]) {
    const signer = verification[role];
    if (!signer) continue;
    const li = document.createElement("li");
    li.dataset.role = role;
    li.textContent = t("rx_signer", {
      role: signerText(role),
      name: signer.name,
      licence: signer.practice_certificate_number || "—",
      serial: signer.certificate_serial,
      time: formatTime(signer.signed_at),
    });
    signers.append(li);
  }
  for (const warning of verification.warnings || []) {
    const li = document.createElement("li");
    li.className = "warning";
    li.textContent = String(warning);
    signers.append(li);
  }
}

function render(p) {
  const badge = $("rx-status");
  badge.textContent = statusText(p.status);
  badge.dataset.status = p.status;
  $("rx-patient").textContent = `${p.patient.name} · ${t(`sex_${p.patient.sex}`)} · ${p.patient.birth_date}`;
  $("rx-doctor").textContent = [p.doctor.name, p.doctor.title].filter(Boolean).join(" · ");
  $("rx-diagnoses").textContent =
    (p.diagnoses || []).map((d) => [d.icd10, d.name].filter(Boolean).join(" ")).join("；") || "—";
  $("rx-issued").textContent = p.issued_at ? formatTime(p.issued_at) : "—";
  $("rx-validity").textContent = t("rx_validity_value", { days: p.validity_days });
  $("rx-chronic").textContent = p.chronic_reason || "—";
  $("rx-total").textContent = t("rx_total_value", { yuan: (Number(p.total || 0) / 100).toFixed(2) });
  $("rx-summary").setAttribute("aria-busy", "false");
  $("rx-lines").replaceChildren(
    ...p.lines.map((l) => {
      const row = document.createElement("tr");
      const cells = [
        `${l.drug_code} ${l.drug_name} ${l.specification}`,
        `${Number(l.dose)} ${l.dose_unit} · ${l.frequency} · ${l.route}`,
        String(l.days),
        `${l.quantity} ${l.unit}`,
      ];
      for (const text of cells) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      return row;
    }),
  );
  renderChecks($("rx-checks"), p.checks || []);
  renderVerification(p.verification);
  const open = p.status === "under_review";
  $("rx-approve-form").hidden = !open;
  $("rx-reject-form").hidden = !open;
  const done = $("rx-done");
  done.hidden = open;
  if (!open) {
    done.textContent = [
      t("rx_done", { status: statusText(p.status) }),
      p.status_reason ? p.status_reason : "",
    ]
      .filter(Boolean)
      .join(" ");
  }
}

async function act(form, errorBox, action, body) {
  clearError(errorBox);
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    render(await write(`${path}/${action}`, "POST", body));
    sessionStorage.removeItem(reasonKey);
    $("rx-done").focus?.();
    return true;
  } catch (error) {
    showError(errorBox, error);
    return false;
  } finally {
    button.disabled = false;
  }
}

$("rx-approve-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("rx-otp");
  const ok = await act(event.currentTarget, $("rx-approve-error"), "approve", { otp: input.value.trim() });
  if (ok) input.value = "";
  else {
    input.select();
    input.focus();
  }
});

$("rx-reject-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const reason = $("rx-reject-reason");
  if (!reason.value.trim()) {
    showError($("rx-reject-error"), { code: "validation_error", detail: t("rx_reject_reason"), errors: null });
    reason.focus();
    return;
  }
  await act(event.currentTarget, $("rx-reject-error"), "reject", { reason: reason.value.trim() });
});

$("rx-reject-reason").addEventListener("input", (event) => {
  try {
    sessionStorage.setItem(reasonKey, event.target.value);
  } catch {
    // the page still works without storage
  }
});

(async () => {
  $("rx-reject-reason").value = sessionStorage.getItem(reasonKey) || "";
  try {
    render(await api(path));
  } catch (error) {
    showError($("rx-page-error"), error);
  }
})();
