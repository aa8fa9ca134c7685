// The doctor's home: the duty switch, the identity check, the waiting queue and the
// doctor's consultations in progress. The lists are read from the API; the console
// WebSocket (/ws/console/) rings the bell when they change, and the page reads them
// again (the socket is a doorbell, the API the truth), so nothing is ever reloaded.

import "./page.js";
import { api, apiList, clearError, showError } from "./api.js";
import { config, formatTime, t } from "./i18n.js";
import { LiveSocket } from "./socket.js";

const $ = (id) => document.getElementById(id);
const roomUrl = (id) => `${config.urls.doctor}consultations/${id}/`;

// --- duty and identity check -------------------------------------------------------------

const duty = $("duty-switch");

function showDuty(onDuty) {
  duty.setAttribute("aria-checked", String(onDuty));
  $("duty-state").textContent = t(onDuty ? "duty_on" : "duty_off");
  duty.disabled = false;
}

function showIdentity(checkedAt) {
  $("identity-state").textContent = checkedAt
    ? t("identity_checked_at", { time: formatTime(checkedAt) })
    : t("identity_never");
}

duty.addEventListener("click", async () => {
  clearError($("duty-error"));
  const wanted = duty.getAttribute("aria-checked") !== "true";
  duty.disabled = true;
  try {
    showDuty((await api("/duty", { method: "POST", body: { on_duty: wanted } })).on_duty);
    refreshLists();
  } catch (error) {
    duty.disabled = false;
    showError($("duty-error"), error);
  }
});

$("identity-check").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  clearError($("identity-error"));
  button.disabled = true;
  try {
    const outcome = await api("/identity-check", { method: "POST" });
    showIdentity(outcome.checked_at);
    $("identity-state").textContent += ` · ${t(outcome.passed ? "identity_passed" : "identity_failed")}${outcome.message ? ` (${outcome.message})` : ""}`;
  } catch (error) {
    showError($("identity-error"), error);
  } finally {
    button.disabled = false;
  }
});

// --- the lists ---------------------------------------------------------------------------

function item(consultation, linkKey) {
  const li = document.createElement("li");
  li.dataset.consultation = consultation.id;
  const link = document.createElement("a");
  link.href = roomUrl(consultation.id);
  link.className = "item-link";
  link.setAttribute("aria-label", t(linkKey, { name: consultation.patient.name }));
  const name = document.createElement("strong");
  name.textContent = consultation.patient.name;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = [
    consultation.department.name,
    t("queue_requested_at", { time: formatTime(consultation.requested_at, { short: true }) }),
    consultation.status === "waiting"
      ? t("queue_expires_at", { time: formatTime(consultation.expires_at, { short: true }) })
      : "",
  ]
    .filter(Boolean)
    .join(" · ");
  link.append(name, meta);
  if (consultation.complaint) {
    const complaint = document.createElement("span");
    complaint.className = "complaint";
    complaint.textContent = consultation.complaint;
    link.append(complaint);
  }
  li.append(link);
  return li;
}

function fill(listId, consultations, linkKey) {
  const list = $(listId);
  const before = new Set([...list.children].map((li) => li.dataset.consultation));
  list.replaceChildren(...consultations.map((c) => item(c, linkKey)));
  list.setAttribute("aria-busy", "false");
  $(`${listId}-empty`).hidden = consultations.length > 0;
  $(`${listId}-count`).textContent = consultations.length ? `(${consultations.length})` : "";
  return consultations.filter((c) => !before.has(c.id));
}

let firstFill = true;
let refreshing = null;
let again = false;

async function refreshLists() {
  if (refreshing) {
    again = true; // one more read after this one, so the last change is never missed
    return refreshing;
  }
  refreshing = (async () => {
    try {
      clearError($("queue-error"));
      const [waiting, mine] = await Promise.all([
        apiList("/consultations?status=waiting"),
        apiList("/consultations?status=in_progress"),
      ]);
      const arrived = fill("queue", waiting, "queue_open");
      fill("mine", mine, "mine_open");
      if (!firstFill) {
        for (const c of arrived) $("announcer").textContent = t("queue_arrived", { name: c.patient.name });
        for (const c of arrived) document.querySelector(`#queue [data-consultation="${c.id}"]`)?.classList.add("new");
      }
      firstFill = false;
    } catch (error) {
      showError($("queue-error"), error);
    } finally {
      refreshing = null;
      if (again) {
        again = false;
        refreshLists();
      }
    }
  })();
  return refreshing;
}

// --- start -------------------------------------------------------------------------------

const socket = new LiveSocket({
  ticketPath: "/ws-ticket",
  indicator: $("connection"),
  onOpen: refreshLists, // whatever happened while disconnected
  onFrame: (frame) => {
    if (frame.type === "queue.changed") refreshLists();
  },
});

(async () => {
  try {
    const status = await api("/duty");
    showDuty(status.on_duty);
    showIdentity(status.identity_checked_at);
  } catch (error) {
    showError($("duty-error"), error);
  }
  await refreshLists();
  socket.start();
})();
