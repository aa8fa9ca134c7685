// The consultation room: the patient summary, the chat over /ws/consultations/{id}/ and
// the consultation's actions (accept, end, refer offline, refuse as a first visit). The
// API decides what is allowed; the page shows its answers and errors next to the action.
//
// The chat keeps CONTRACT section 3's promise on the page: every connection resumes
// with after_seq = the highest seq seen, every message is shown once (by seq) and in seq
// order, and what the doctor wrote stays in the outbox (and sessionStorage) until the
// server acknowledges it, being sent again with the same client_msg_id after a reconnect.

import "./page.js";
import { api, clearError, problemText, showError } from "./api.js";
import { VideoCall } from "./call.js";
import { Conversation, newClientMsgId } from "./chat.js";
import { config, formatTime, t } from "./i18n.js";
import { LiveSocket } from "./socket.js";

const $ = (id) => document.getElementById(id);
const consultationId = config.consultation;
const base = `/consultations/${consultationId}`;
const me = config.user.id;
const chat = new Conversation(consultationId);
const list = $("messages");
const input = $("chat-input");

let consultation = {};
let readByPatient = 0;
let readSent = 0;
let lastTyping = 0;
let typingTimer = 0;

// --- the consultation's state --------------------------------------------------------------

const BEFORE_ACCEPT = new Set(["requested", "waiting"]);

function showState(state) {
  consultation = { ...consultation, ...state };
  const status = consultation.status;
  const badge = $("room-status");
  badge.textContent = t(`status_${status}`);
  badge.dataset.status = status;
  $("patient-complaint").textContent = consultation.complaint || "—";
  for (const form of document.querySelectorAll("form.action")) {
    form.hidden = !form.dataset.statuses.split(" ").includes(status);
  }
  const open = status === "in_progress";
  // Prescribing: while in progress, or ended within the grace period (the API decides).
  $("rx-link").hidden = !(open || status === "ended");
  for (const control of [input, $("chat-file"), $("chat-send")]) control.disabled = !open;
  call.setOpen(open);
  $("chat-closed").hidden = open;
  const closed = $("closed-state");
  const final = !open && !BEFORE_ACCEPT.has(status);
  closed.hidden = !final;
  if (final) {
    const lines = [t("room_closed", { status: t(`status_${status}`) })];
    if (consultation.status_reason) lines.push(t("room_reason", { reason: consultation.status_reason }));
    if (consultation.diagnoses?.length) {
      const names = consultation.diagnoses.map((d) => `${d.icd10} ${d.name}`).join("；");
      lines.push(t("room_diagnoses", { diagnoses: names }));
    }
    closed.textContent = lines.join("\n");
  }
  if (!BEFORE_ACCEPT.has(status) && socket.state === "idle") socket.start();
}

// --- the patient summary -----------------------------------------------------------------

async function loadSummary() {
  const summary = await api(`${base}/patient`);
  $("patient-name").textContent = summary.name;
  $("patient-sex").textContent = t(`sex_${summary.sex}`);
  $("patient-age").textContent = t("summary_age_value", { age: summary.age });
  $("patient-relation").textContent = t(`relation_${summary.relation}`);
  $("patient-allergies").textContent = summary.allergies.length
    ? summary.allergies.join("、")
    : t("summary_no_allergies");
  const prior = summary.prior_diagnosis;
  $("patient-prior").textContent = prior
    ? `${prior.icd10_code} ${prior.icd10_name} · ${prior.institution} · ${prior.diagnosed_on}` +
      (prior.diagnosis_text ? ` · ${prior.diagnosis_text}` : "")
    : "—";
  const earlier = summary.earlier_consultations.map((c) => {
    const li = document.createElement("li");
    const diagnoses = c.diagnoses.map((d) => `${d.icd10} ${d.name}`).join("；");
    li.textContent = [formatTime(c.requested_at), c.department, t(`status_${c.status}`), diagnoses]
      .filter(Boolean)
      .join(" · ");
    return li;
  });
  if (!earlier.length) {
    const li = document.createElement("li");
    li.textContent = t("summary_no_earlier");
    earlier.push(li);
  }
  $("earlier").replaceChildren(...earlier);
  $("summary").setAttribute("aria-busy", "false");
}

// --- messages ----------------------------------------------------------------------------

function attachmentUrl(attachment) {
  return `${config.api}${base}/attachments/${attachment.id}`;
}

function whose(message) {
  if (message.kind === "system" || !message.sender) return "system";
  return message.sender === me ? "mine" : "theirs";
}

function bubble(side, label, time) {
  const li = document.createElement("li");
  li.className = `msg ${side}`;
  const head = document.createElement("span");
  head.className = "who";
  head.textContent = time ? `${label} · ${time}` : label;
  li.append(head);
  return li;
}

function body(message) {
  const a = message.attachment;
  if (a && message.kind === "image") {
    const figure = document.createElement("a");
    figure.href = attachmentUrl(a);
    figure.target = "_blank";
    figure.rel = "noopener";
    const img = document.createElement("img");
    img.src = attachmentUrl(a);
    img.alt = t("chat_attachment", { name: a.filename });
    figure.append(img);
    return figure;
  }
  if (a) {
    const link = document.createElement("a");
    link.href = attachmentUrl(a);
    link.textContent = t("chat_attachment", { name: a.filename });
    return link;
  }
  const p = document.createElement("p");
  p.textContent = message.kind === "system" ? systemText(message.text) : message.text;
  return p;
}

/** The server's system messages, in the page's language (others as stored). */
function systemText(text) {
  const key = { "call.started": "call_started", "call.ended": "call_ended" }[text];
  return key ? t(key) : text;
}

function receipt(li, key) {
  let status = li.querySelector(".receipt");
  if (!status) {
    status = document.createElement("span");
    status.className = "receipt";
    li.append(status);
  }
  status.textContent = t(key);
  status.dataset.state = key;
}

function render(message) {
  const side = whose(message);
  const label = { mine: t("chat_me"), theirs: t("chat_patient"), system: t("chat_system") }[side];
  const li = bubble(side, label, formatTime(message.created_at, { short: true }));
  li.dataset.seq = message.seq;
  li.append(body(message));
  if (side === "mine") receipt(li, message.seq <= readByPatient ? "chat_read" : "chat_sent");
  return li;
}

/** Show a stored message once, in seq order (repeats are dropped by seq). */
function show(message) {
  if (!chat.add(message)) return false;
  list.querySelector(`[data-ack-seq="${message.seq}"]`)?.remove();
  const li = render(message);
  const later = [...list.querySelectorAll("li[data-seq]")].find((el) => Number(el.dataset.seq) > message.seq);
  list.insertBefore(li, later || list.querySelector("li.pending") || null);
  list.scrollTop = list.scrollHeight;
  return true;
}

function showPending(item) {
  const li = bubble("mine pending", t("chat_me"), "");
  li.dataset.clientMsgId = item.client_msg_id;
  li.append(body({ kind: item.kind, text: item.text, attachment: item.attachment || null }));
  receipt(li, "chat_pending");
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

function pendingBubble(clientMsgId) {
  return list.querySelector(`li[data-client-msg-id="${clientMsgId}"]`);
}

function flushOutbox() {
  for (const item of chat.outbox) {
    const { attachment, ...frame } = item;
    if (!socket.send({ type: "message.send", ...frame })) return;
  }
}

function acknowledged(frame) {
  chat.settle(frame.client_msg_id);
  const li = pendingBubble(frame.client_msg_id);
  if (!li) return;
  if (chat.messages.has(frame.seq)) {
    li.remove(); // its message.new came first
    return;
  }
  li.dataset.ackSeq = frame.seq; // replaced by the message when it arrives
  receipt(li, "chat_sent");
}

function refused(frame) {
  const item = chat.settle(frame.client_msg_id);
  const li = pendingBubble(frame.client_msg_id);
  if (li) {
    li.classList.add("failed");
    receipt(li, "chat_failed");
    li.querySelector(".receipt").textContent += ` · ${problemText(frame)}`;
  }
  if (item?.text && !input.value) {
    input.value = item.text; // never lose what the doctor wrote
    chat.draft = item.text;
  }
}

function markRead() {
  if (document.visibilityState !== "visible" || chat.highestSeq <= readSent) return;
  if (socket.send({ type: "read", up_to_seq: chat.highestSeq })) readSent = chat.highestSeq;
}

function patientRead(upTo) {
  readByPatient = Math.max(readByPatient, upTo);
  for (const li of list.querySelectorAll("li.mine[data-seq]")) {
    if (Number(li.dataset.seq) <= readByPatient) receipt(li, "chat_read");
  }
}

function patientTyping() {
  $("typing").hidden = false;
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => {
    $("typing").hidden = true;
  }, 4000);
}

async function onFrame(frame) {
  switch (frame.type) {
    case "sync":
      showState(frame.consultation);
      for (const message of frame.messages) show(message);
      flushOutbox();
      markRead();
      break;
    case "message.new":
      if (show(frame.message) && whose(frame.message) === "theirs") $("typing").hidden = true;
      markRead();
      break;
    case "message.ack":
      acknowledged(frame);
      break;
    case "read.receipt":
      if (frame.user !== me) patientRead(frame.up_to_seq);
      break;
    case "typing":
      if (frame.user !== me) patientTyping();
      break;
    case "call.signal":
      call.onSignal(frame.signal);
      break;
    case "consultation.state":
      showState({ status: frame.status, status_reason: frame.reason });
      if (!BEFORE_ACCEPT.has(frame.status)) showState(await api(base)); // diagnoses etc.
      break;
    case "error":
      if (frame.code === "rate_limited") {
        // The frame was dropped; what it carried is still in the outbox: send it again
        // shortly (a repeated client_msg_id is stored once).
        setTimeout(flushOutbox, 1000);
      } else if (frame.client_msg_id) {
        refused(frame);
      } else {
        showError($("chat-error"), frame);
      }
      break;
    default:
      break;
  }
}

const socket = new LiveSocket({
  ticketPath: `${base}/ws-ticket`,
  params: () => ({ after_seq: chat.highestSeq }),
  indicator: $("connection"),
  onFrame,
  onFailure: (error) => showError($("room-error"), { ...error, detail: t("conn_failed") }),
});

const call = new VideoCall({
  send: (signal) => socket.send({ type: "call.signal", signal }),
  connected: () => socket.isOpen,
  iceServers: config.ice_servers || [],
});

// --- writing -----------------------------------------------------------------------------

function send(item) {
  chat.enqueue(item);
  showPending(item);
  flushOutbox();
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  send({ client_msg_id: newClientMsgId(), kind: "text", text });
  input.value = "";
  chat.draft = "";
  input.focus();
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

input.addEventListener("input", () => {
  chat.draft = input.value;
  if (input.value && Date.now() - lastTyping > 3000 && socket.send({ type: "typing" })) {
    lastTyping = Date.now();
  }
});

$("chat-file").addEventListener("change", async (event) => {
  const picker = event.currentTarget;
  const file = picker.files[0];
  if (!file) return;
  clearError($("chat-error"));
  const form = new FormData();
  form.append("file", file);
  try {
    const attachment = await api(`${base}/attachments`, { method: "POST", form });
    send({
      client_msg_id: newClientMsgId(),
      kind: attachment.content_type.startsWith("image/") ? "image" : "file",
      text: "",
      attachment_id: attachment.id,
      attachment,
    });
  } catch (error) {
    showError($("chat-error"), error);
  } finally {
    picker.value = "";
  }
});

document.addEventListener("visibilitychange", markRead);

// --- actions -----------------------------------------------------------------------------

/** Fields of the action forms are kept like the chat draft until the action succeeds. */
function keepFields(form) {
  for (const field of form.querySelectorAll("textarea, input[name]")) {
    const saved = chat.load(`field.${field.id}`, null);
    if (saved !== null) field.value = saved;
    field.addEventListener("input", () => chat.save(`field.${field.id}`, field.value));
  }
}

function forgetFields(form) {
  for (const field of form.querySelectorAll("textarea, input[name]")) {
    chat.storage.removeItem(`${chat.prefix}.field.${field.id}`);
  }
}

function action(formId, path, bodyOf) {
  const form = $(formId);
  keepFields(form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = form.querySelector(".error");
    clearError(error);
    let body;
    try {
      body = bodyOf(form);
    } catch (problem) {
      showError(error, problem);
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const state = await api(`${base}/${path}`, { method: "POST", body });
      forgetFields(form);
      showState(state);
    } catch (problem) {
      showError(error, problem);
    } finally {
      button.disabled = false;
    }
  });
}

/** "20", "20.5" or "20.50" yuan → fen, exactly (no floating point). */
function yuanToFen(text) {
  const match = /^\s*(\d{1,7})(?:[.,](\d{1,2}))?\s*$/.exec(text);
  if (!match) throw { code: "fee_invalid", detail: t("fee_invalid") };
  return Number(match[1]) * 100 + Number((match[2] || "").padEnd(2, "0"));
}

// The ICD-10 search and the chosen diagnoses of the end form.
const chosen = [];

function showChosen() {
  const items = chosen.map((d, index) => {
    const li = document.createElement("li");
    li.dataset.code = d.code;
    const main = document.createElement("input");
    main.type = "radio";
    main.name = "main-diagnosis";
    main.id = `main-${index}`;
    main.checked = d.main;
    main.addEventListener("change", () => chosen.forEach((c) => (c.main = c === d)));
    const label = document.createElement("label");
    label.htmlFor = main.id;
    label.textContent = `${t("icd_main")}：${d.code} ${d.name}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "link";
    remove.textContent = "×";
    remove.setAttribute("aria-label", t("icd_remove", { code: d.code }));
    remove.addEventListener("click", () => {
      chosen.splice(chosen.indexOf(d), 1);
      if (chosen.length && !chosen.some((c) => c.main)) chosen[0].main = true;
      showChosen();
    });
    li.append(main, label, remove);
    return li;
  });
  $("icd-chosen").replaceChildren(...items);
}

let searchTimer = 0;
let searchSeq = 0;

$("icd-search").addEventListener("input", (event) => {
  clearTimeout(searchTimer);
  const query = event.currentTarget.value.trim();
  searchTimer = setTimeout(async () => {
    const mine = (searchSeq += 1);
    if (!query) {
      $("icd-results").replaceChildren();
      $("icd-status").textContent = "";
      return;
    }
    try {
      const page = await api(`/icd10?q=${encodeURIComponent(query)}&page_size=10`);
      if (mine !== searchSeq) return; // a later search answered first
      $("icd-status").textContent = page.results.length ? "" : t("icd_none");
      $("icd-results").replaceChildren(
        ...page.results.map((entry) => {
          const li = document.createElement("li");
          const button = document.createElement("button");
          button.type = "button";
          button.className = "choice";
          const name = config.lang === "en" ? entry.name_en : entry.name;
          button.textContent = `${entry.code} ${name}`;
          button.setAttribute("aria-label", t("icd_choose", { code: entry.code, name }));
          button.addEventListener("click", () => {
            if (!chosen.some((d) => d.code === entry.code)) {
              chosen.push({ code: entry.code, name, main: chosen.length === 0 });
            }
            showChosen();
            $("icd-search").focus();
          });
          li.append(button);
          return li;
        }),
      );
    } catch (error) {
      showError($("end-form").querySelector(".error"), error);
    }
  }, 250);
});

action("accept-form", "accept", () => ({ follow_up_confirmed: $("follow-up-confirmed").checked }));
action("end-form", "end", () => ({
  diagnoses: chosen.map((d) => ({ icd10: d.code, main: d.main })),
  note: {
    chief_complaint: $("note-chief-complaint").value,
    history: $("note-history").value,
    findings: $("note-findings").value,
    advice: $("note-advice").value,
  },
  fee: yuanToFen($("fee").value),
}));
action("refer-form", "refer-offline", () => ({ reason: $("refer-reason").value }));
action("refuse-form", "refuse-first-visit", () => ({ reason: $("refuse-reason").value }));

// --- start -------------------------------------------------------------------------------

(async () => {
  input.value = chat.draft;
  for (const item of chat.outbox) showPending(item); // written before a reload, not yet sent
  loadSummary().catch((error) => showError($("room-error"), error));
  try {
    showState(await api(base));
  } catch (error) {
    showError($("room-error"), error);
  }
})();
