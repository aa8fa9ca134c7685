// What the prescription pages share: the words of a prescription's status, a rule
// check's outcome and a signer's role (one literal key per value, so the catalogue
// check finds them), and the rule checks list as the API gives it (name from
// prescriptions/rules.py RULE_NAMES, outcome, message, line), and the writes that carry
// a second factor.

import { ApiError } from "./api.js";
import { config, t } from "./i18n.js";

const STATUS = {
  new: "rx_status_new",
  draft: "rx_status_draft",
  signed: "rx_status_signed",
  under_review: "rx_status_under_review",
  review_rejected: "rx_status_review_rejected",
  active: "rx_status_active",
  claimed: "rx_status_claimed",
  dispensed: "rx_status_dispensed",
  shipped: "rx_status_shipped",
  delivered: "rx_status_delivered",
  cancelled: "rx_status_cancelled",
  expired: "rx_status_expired",
};
const OUTCOME = { pass: "rx_outcome_pass", warning: "rx_outcome_warning", error: "rx_outcome_error" };
const SIGNER = { doctor: "rx_signer_doctor", pharmacist: "rx_signer_pharmacist" };

export const statusText = (status) => (STATUS[status] ? t(STATUS[status]) : status);
export const signerText = (role) => (SIGNER[role] ? t(SIGNER[role]) : role);

/** Fill `list` with the rule checks; the check of `refusedRule` (if any) is marked. */
export function renderChecks(list, checks, { refusedRule = null } = {}) {
  list.replaceChildren(
    ...checks.map((check) => {
      const li = document.createElement("li");
      li.className = "rx-check";
      li.dataset.rule = check.rule;
      li.dataset.outcome = check.outcome;
      const outcome = document.createElement("span");
      outcome.className = "badge outcome";
      outcome.textContent = OUTCOME[check.outcome] ? t(OUTCOME[check.outcome]) : check.outcome;
      const name = document.createElement("strong");
      name.className = "rule-name";
      name.textContent = check.name;
      const message = document.createElement("span");
      message.className = "meta";
      message.textContent = [check.line ? t("rx_check_line", { n: check.line }) : "", check.message]
        .filter(Boolean)
        .join(" · ");
      li.append(outcome, " ", name, " ", message);
      if (refusedRule && check.rule === refusedRule && check.outcome === "error") {
        li.classList.add("refused");
      }
      return li;
    }),
  );
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

/**
 * Like api() for a write, with two differences the prescription pages need: a refusal
 * keeps the rule checks the API attached to it (`error.checks`), and a wrong
 * authenticator code (401 `totp_invalid`) is an answer to show next to the action, not
 * the end of the session: any other 401 signs the page out, as api() does.
 */
export async function write(path, method, body) {
  let response;
  try {
    response = await fetch(config.api + path, {
      method,
      headers: {
        Accept: "application/json",
        "Content-Type": "application/json",
        "X-CSRFToken": cookie("csrftoken"),
      },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, { code: "network_error", detail: t("network_error") });
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    if (response.status === 401 && !["totp_invalid", "totp_not_enrolled"].includes(data?.code)) {
      window.dispatchEvent(new CustomEvent("console:signed-out"));
    }
    const error = new ApiError(response.status, data || {});
    error.checks = Array.isArray(data?.checks) ? data.checks : null;
    throw error;
  }
  window.dispatchEvent(new CustomEvent("console:activity"));
  return data;
}
