// The pharmacist's home: the duty switch and the live review queue (GET reviews, oldest
// first). On-duty pharmacists get `prescription.changed` frames on /ws/console/ whenever
// a prescription of their hospital moves (prescriptions/push.py); the frame is a
// doorbell: the page reads the queue again, and again after every (re)connection.

import "./page.js";
import { api, apiList, clearError, showError } from "./api.js";
import { config, formatTime, t } from "./i18n.js";
import { LiveSocket } from "./socket.js";

const $ = (id) => document.getElementById(id);
const reviewUrl = (id) => `${config.review_url}prescriptions/${id}/`;

// --- duty ----------------------------------------------------------------------------------

const duty = $("duty-switch");

function showDuty(onDuty) {
  duty.setAttribute("aria-checked", String(onDuty));
  $("duty-state").textContent = t(onDuty ? "rx_duty_on" : "rx_duty_off");
  duty.disabled = false;
}

duty.addEventListener("click", async () => {
  clearError($("duty-error"));
  const wanted = duty.getAttribute("aria-checked") !== "true";
  duty.disabled = true;
  try {
    showDuty((await api("/duty", { method: "POST", body: { on_duty: wanted } })).on_duty);
    refresh();
  } catch (error) {
    duty.disabled = false;
    showError($("duty-error"), error);
  }
});

// --- the queue -----------------------------------------------------------------------------

function item(prescription) {
  const li = document.createElement("li");
  li.dataset.prescription = prescription.id;
  const link = document.createElement("a");
  link.href = reviewUrl(prescription.id);
  link.className = "item-link";
  link.setAttribute("aria-label", t("rx_queue_open", { name: prescription.patient.name }));
  const name = document.createElement("strong");
  name.textContent = prescription.patient.name;
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = t("rx_queue_meta", {
    doctor: prescription.doctor.name,
    lines: prescription.lines.length,
    time: formatTime(prescription.issued_at, { short: true }),
  });
  const drugs = document.createElement("span");
  drugs.className = "complaint";
  drugs.textContent = prescription.lines.map((l) => `${l.drug_name} ${l.specification}`).join("；");
  link.append(name, meta, drugs);
  li.append(link);
  return li;
}

let firstFill = true;
let refreshing = null;
let again = false;

async function refresh() {
  if (refreshing) {
    again = true; // one more read after this one, so the last change is never missed
    return refreshing;
  }
  refreshing = (async () => {
    try {
      clearError($("reviews-error"));
      const reviews = await apiList("/reviews");
      const list = $("reviews");
      const before = new Set([...list.children].map((li) => li.dataset.prescription));
      list.replaceChildren(...reviews.map(item));
      list.setAttribute("aria-busy", "false");
      $("reviews-empty").hidden = reviews.length > 0;
      $("reviews-count").textContent = reviews.length ? `(${reviews.length})` : "";
      if (!firstFill) {
        for (const p of reviews.filter((r) => !before.has(r.id))) {
          $("announcer").textContent = t("rx_queue_arrived", { name: p.patient.name });
          list.querySelector(`[data-prescription="${p.id}"]`)?.classList.add("new");
        }
      }
      firstFill = false;
    } catch (error) {
      showError($("reviews-error"), error);
    } finally {
      refreshing = null;
      if (again) {
        again = false;
        refresh();
      }
    }
  })();
  return refreshing;
}

// --- start ---------------------------------------------------------------------------------

const socket = new LiveSocket({
  ticketPath: "/ws-ticket",
  indicator: $("connection"),
  onOpen: refresh, // whatever happened while disconnected
  onFrame: (frame) => {
    if (frame.type === "prescription.changed" || frame.type === "queue.changed") refresh();
  },
});

(async () => {
  try {
    showDuty((await api("/duty")).on_duty);
  } catch (error) {
    showError($("duty-error"), error);
  }
  await refresh();
  socket.start();
})();
