// The console API (/api/console/v1/) as the browser calls it: the session cookie, the
// CSRF header on every write, and problem+json errors turned into ApiError.

import { config, t } from "./i18n.js";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || "error";
    this.detail = problem.detail || "";
    this.title = problem.title || "";
    this.errors = problem.errors || null;
  }
}

function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

/** Tell the page that the server saw us (the session's idle clock restarted). */
function activity() {
  window.dispatchEvent(new CustomEvent("console:activity"));
}

/**
 * Call the console API (`path` below its root, or a full URL the API gave). `body` is sent as JSON, `form` as multipart. Resolves with the
 * JSON answer (null for 204); rejects with ApiError (code `network_error` when the
 * server could not be reached). A 401 also fires `console:signed-out`.
 */
export async function api(path, { method = "GET", body, form, anonymous = false } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRFToken"] = cookie("csrftoken");
  let payload;
  if (form) {
    payload = form;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    // A full URL from the API (a `next` link) is fetched on this page's own origin.
    const absolute = /^https?:/.test(path) ? new URL(path) : null;
    const url = absolute ? absolute.pathname + absolute.search : config.api + path;
    response = await fetch(url, {
      method,
      headers,
      body: payload,
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, { code: "network_error", detail: t("network_error") });
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  if (!response.ok) {
    if (response.status === 401 && !anonymous) {
      window.dispatchEvent(new CustomEvent("console:signed-out"));
    }
    throw new ApiError(response.status, data || {});
  }
  activity();
  return data;
}

/** Every page of a cursor-paginated list (at most `pages` pages). */
export async function apiList(path, { pages = 5 } = {}) {
  const results = [];
  let next = path;
  for (let i = 0; next && i < pages; i += 1) {
    const page = await api(next);
    results.push(...page.results);
    next = page.next;
  }
  return results;
}

/** The words to show for a refused call: ours for a known code, else the API's. */
export function problemText(error) {
  const key = `problem_${error.code}`;
  const ours = t(key);
  if (config.lang !== "en" && ours !== key) return ours;
  return error.detail || (ours !== key ? ours : error.title || error.message);
}

/** Show a refused call in the error element next to the action. */
export function showError(element, error) {
  if (!element) return;
  const lines = [problemText(error)];
  if (error.errors) {
    for (const [field, messages] of Object.entries(flatten(error.errors))) {
      lines.push(`${field}: ${messages.join(" ")}`);
    }
  }
  element.textContent = lines.join("\n");
  element.dataset.code = error.code || "";
  element.title = t("error_code", { code: error.code });
  element.hidden = false;
}

export function clearError(element) {
  if (!element) return;
  element.textContent = "";
  element.hidden = true;
  delete element.dataset.code;
}

function flatten(errors, prefix = "") {
  const out = {};
  for (const [key, value] of Object.entries(errors)) {
    const name = prefix ? `${prefix}.${key}` : key;
    if (Array.isArray(value) && value.every((v) => typeof v === "string")) out[name] = value;
    else if (Array.isArray(value)) value.forEach((v, i) => Object.assign(out, flatten(v, `${name}[${i}]`)));
    else if (value && typeof value === "object") Object.assign(out, flatten(value, name));
    else out[name] = [String(value)];
  }
  return out;
}
