// The regulator's console: the province's live feed (/ws/regulator/feed/?after=N, resumed
// from the last seq seen), the alerts, and the indicators dashboard with charts, all read
// through /api/regulator/v1/ with the console session.

import "./page.js";
import { api, apiList, clearError, showError } from "./api.js";
import { RECORD_TYPES } from "./record_types.js";
import { barChart, lineChart } from "./charts.js";
import { config, formatTime, t } from "./i18n.js";
import { LiveSocket } from "./socket.js";

const $ = (id) => document.getElementById(id);
const root = `${location.origin}${config.regulator_api}`;
const hospitals = new Map((config.hospitals || []).map((h) => [h.id, h.name]));
const FEED_SHOWN = 200;

function debounce(fn, ms) {
  let timer = 0;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

// The words of the API's values, one key each (a value without one is shown as it is).
const ALERT_KINDS = {
  upload_delay: "ov_ak_upload_delay",
  controlled_drug: "ov_ak_controlled_drug",
  consultation_expired: "ov_ak_consultation_expired",
  dead_letter: "ov_ak_dead_letter",
  payment_mismatch: "ov_ak_payment_mismatch",
};
const named = (map, code) => (map[code] ? t(map[code]) : code);

function seconds(value) {
  if (value === null || value === undefined) return t("ov_none");
  const n = Math.abs(value) < 10 ? Number(value).toFixed(1) : String(Math.round(value));
  return t("ov_seconds", { n });
}

const number = (value) => (Number.isInteger(value) ? String(value) : Number(value).toFixed(1));

// --- the filter (alerts and indicators) --------------------------------------------------

function filterQuery() {
  const params = new URLSearchParams();
  const hospital = $("filter-hospital").value;
  const from = $("filter-from").value;
  const to = $("filter-to").value;
  if (hospital) params.set("hospital", hospital);
  if (from) params.set("from", from);
  if (to) {
    // The API's `to` is exclusive; the page's date is inclusive.
    const next = new Date(`${to}T00:00:00Z`);
    next.setUTCDate(next.getUTCDate() + 1);
    params.set("to", next.toISOString().slice(0, 10));
  }
  return params;
}

// --- the live feed ------------------------------------------------------------------------

const feed = $("feed");
const records = new Map(); // seq → record
let lastSeq = 0;
let lastRecordAt = Date.now();

function hospitalName(record) {
  return hospitals.get(record.hospital) || record.hospital_code;
}

function feedItem(record) {
  const li = document.createElement("li");
  li.className = "ov-feed-item";
  li.dataset.seq = record.seq;
  li.dataset.type = record.record_type;
  const head = document.createElement("p");
  head.className = "ov-feed-head";
  const type = document.createElement("strong");
  type.textContent = named(RECORD_TYPES, record.record_type);
  const code = document.createElement("code");
  code.textContent = record.record_type;
  const seq = document.createElement("span");
  seq.className = "meta";
  seq.textContent = t("ov_feed_seq", { seq: record.seq });
  head.append(type, " ", code, " ", seq);
  const meta = document.createElement("p");
  meta.className = "meta";
  const hospital = document.createElement("span");
  hospital.className = "ov-feed-hospital";
  hospital.textContent = hospitalName(record);
  const time = document.createElement("time");
  time.dateTime = record.occurred_at;
  time.textContent = formatTime(record.occurred_at);
  const delay = document.createElement("span");
  delay.className = "ov-feed-delay";
  delay.textContent = t("ov_feed_delay", { delay: seconds(record.delivery_latency_seconds) });
  meta.append(hospital, " · ", time, " · ", delay);
  li.append(head, meta);
  if (record.record_type === "alert") {
    li.classList.add("ov-alert-item");
    const rule = document.createElement("p");
    rule.className = "ov-rule";
    rule.textContent = `${named(ALERT_KINDS, record.payload.kind || "")} · ${t("ov_alert_rule", {
      rule: record.payload.rule || "",
    })}`;
    li.append(rule);
  }
  return li;
}

const drawLiveChart = debounce(() => {
  const ordered = [...records.values()].sort((a, b) => a.seq - b.seq);
  lineChart($("chart-upload-live").querySelector(".ov-chart-body"), {
    title: t("ov_chart_upload_live"),
    points: ordered.map((r) => ({
      label: `#${r.seq} ${named(RECORD_TYPES, r.record_type)}`,
      value: r.delivery_latency_seconds,
    })),
    format: number,
    seriesLabel: t("ov_series_delay"),
    categoryHeading: t("ov_col_record"),
    tableCaption: t("ov_chart_table"),
    empty: t("ov_chart_no_data"),
  });
}, 150);

const announce = debounce(() => {
  const newest = records.get(lastSeq);
  if (!newest) return;
  $("announcer").textContent = t("ov_feed_arrived", {
    type: named(RECORD_TYPES, newest.record_type),
    hospital: hospitalName(newest),
  });
}, 400);

function addRecord(record) {
  if (record.seq === null || record.seq === undefined || records.has(record.seq)) return;
  records.set(record.seq, record);
  lastSeq = Math.max(lastSeq, record.seq);
  lastRecordAt = Date.now();
  const li = feedItem(record);
  if (socketReady) li.classList.add("new");
  // Newest first: before the first item with a smaller seq.
  const after = [...feed.children].find((item) => Number(item.dataset.seq) < record.seq);
  feed.insertBefore(li, after || null);
  while (feed.children.length > FEED_SHOWN) feed.lastElementChild.remove();
  $("feed-empty").hidden = true;
  $("feed-count").textContent = t("ov_feed_count", { n: records.size });
  drawLiveChart();
  announce();
  if (record.record_type === "alert") loadAlertsSoon();
  refreshIndicatorsSoon();
}

let socketReady = false;
let openedAt = 0;
let lastFrameAt = 0;
let pushesArrive = false;
const socket = new LiveSocket({
  ticketPath: `${root}/ws-ticket`,
  params: () => ({ after: lastSeq }),
  indicator: $("connection"),
  onOpen: () => {
    openedAt = Date.now();
    clearError($("feed-error"));
    feed.setAttribute("aria-busy", "false");
    setTimeout(() => {
      socketReady = true;
      $("feed-empty").hidden = records.size > 0;
    }, 500);
  },
  onFrame: (frame) => {
    if (frame.type !== "record") return;
    const now = Date.now();
    // A record on its own, well after the catch-up that follows each (re)connection, was
    // pushed: the channel layer reaches this server, so no resync is needed.
    if (now - openedAt > 2000 && now - lastFrameAt > 1000) pushesArrive = true;
    lastFrameAt = now;
    addRecord(frame.record);
  },
  onFailure: (error) => showError($("feed-error"), error),
});

/** The feed starts with today's records (Beijing time), or the last 30 days' when today
 * has none: the first such record's seq, less one, is where `?after=` begins. */
async function startingPoint() {
  const beijing = (offsetDays) =>
    new Date(Date.now() + 8 * 3600 * 1000 - offsetDays * 86400 * 1000).toISOString().slice(0, 10);
  for (const from of [beijing(0), beijing(30)]) {
    try {
      const page = await api(`${root}/records?from=${from}&page_size=1`);
      if (page.results.length) return Math.max(page.results[0].seq - 1, 0);
    } catch {
      return 0; // the socket will say what is wrong
    }
  }
  return 0;
}

startingPoint().then((after) => {
  lastSeq = after;
  socket.start();
});

// Without a shared channel layer no push reaches this server's socket: when the feed has
// been quiet, reconnect with ?after= and the server sends whatever was missed.
const resyncMs = (config.feed_resync_seconds || 0) * 1000;
if (resyncMs > 0) {
  setInterval(() => {
    if (!pushesArrive && socket.isOpen && Date.now() - lastRecordAt >= resyncMs) {
      lastRecordAt = Date.now();
      socket.detach();
      socket.connect();
    }
  }, resyncMs);
}

// --- alerts ---------------------------------------------------------------------------------

function alertItem(alert) {
  const li = document.createElement("li");
  li.className = "ov-alert";
  li.dataset.id = alert.id;
  li.dataset.kind = alert.kind;
  const head = document.createElement("p");
  head.className = "ov-feed-head";
  const kind = document.createElement("strong");
  kind.textContent = named(ALERT_KINDS, alert.kind);
  const hospital = document.createElement("span");
  hospital.className = "meta";
  hospital.textContent = alert.hospital_name;
  head.append(kind, " ", hospital);
  const rule = document.createElement("p");
  rule.className = "ov-rule";
  rule.textContent = t("ov_alert_rule", { rule: alert.rule });
  const time = document.createElement("time");
  time.className = "meta";
  time.dateTime = alert.created_at;
  time.textContent = formatTime(alert.created_at);
  li.append(head, rule, time);
  return li;
}

async function loadAlerts() {
  const list = $("alerts");
  list.setAttribute("aria-busy", "true");
  try {
    const alerts = await apiList(`${root}/alerts?${filterQuery()}`, { pages: 2 });
    list.replaceChildren(...alerts.map(alertItem));
    $("alerts-empty").hidden = alerts.length > 0;
    $("alerts-count").textContent = String(alerts.length);
    clearError($("alerts-error"));
  } catch (error) {
    showError($("alerts-error"), error);
  } finally {
    list.setAttribute("aria-busy", "false");
  }
}
const loadAlertsSoon = debounce(loadAlerts, 300);

// --- indicators -------------------------------------------------------------------------------

function chart(id, title, rows, series, format = number) {
  barChart($(id).querySelector(".ov-chart-body"), {
    title,
    categories: rows.map((r) => r.hospital_name || r.hospital),
    series: series.map(([key, label, pick]) => ({ key, label, values: rows.map(pick) })),
    format,
    categoryHeading: t("ov_hospital"),
    tableCaption: `${title} · ${t("ov_chart_table")}`,
    empty: t("ov_chart_no_data"),
  });
}

async function loadIndicators() {
  const box = $("indicators");
  box.setAttribute("aria-busy", "true");
  try {
    const { results: rows } = await api(`${root}/indicators?${filterQuery()}`);
    clearError($("indicators-error"));
    $("indicators-empty").hidden = rows.length > 0;
    if (rows.length) {
      $("indicators-period").textContent = `${formatTime(rows[0].since)} – ${formatTime(rows[0].until)}`;
    }
    chart("chart-consultations", t("ov_chart_consultations"), rows, [
      ["requested", t("ov_series_requested"), (r) => r.consultations_requested],
      ["answered", t("ov_series_answered"), (r) => r.consultations_answered],
      ["expired", t("ov_series_expired"), (r) => r.consultations_expired_unanswered],
    ]);
    chart("chart-accept", t("ov_chart_accept"), rows, [
      ["median", t("ov_series_median"), (r) => r.time_to_accept_seconds.median],
      ["p95", t("ov_series_p95"), (r) => r.time_to_accept_seconds.p95],
    ]);
    chart("chart-prescriptions", t("ov_chart_prescriptions"), rows, [
      ["issued", t("ov_series_issued"), (r) => r.prescriptions_issued],
      ["reviewed", t("ov_series_reviewed"), (r) => r.prescriptions_reviewed],
      ["rejected", t("ov_series_rejected"), (r) => r.prescriptions_rejected_by_review],
      ["dispensed", t("ov_series_dispensed"), (r) => r.prescriptions_dispensed],
    ]);
    chart("chart-upload", t("ov_chart_upload"), rows, [
      ["median", t("ov_series_median"), (r) => r.upload_delay_seconds.median],
      ["p95", t("ov_series_p95"), (r) => r.upload_delay_seconds.p95],
      ["max", t("ov_series_max"), (r) => r.upload_delay_seconds.max],
    ]);
  } catch (error) {
    showError($("indicators-error"), error);
  } finally {
    box.setAttribute("aria-busy", "false");
  }
}
const refreshIndicatorsSoon = debounce(loadIndicators, 1000);

$("filter").addEventListener("submit", (event) => {
  event.preventDefault();
  clearError($("filter-error"));
  loadAlerts();
  loadIndicators();
});

drawLiveChart();
loadAlerts();
loadIndicators();
