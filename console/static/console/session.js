// The session's idle timeout, as the server keeps it: every request restarts the server's
// clock (the API's `idle_seconds`), so every successful API call restarts ours. A minute
// before the end a dialog offers to stay signed in; at the end, the sign-in page.

import { api } from "./api.js";
import { config, t } from "./i18n.js";

const WARN_SECONDS = 60;

function signInUrl(reason) {
  const params = new URLSearchParams({ next: location.pathname + location.search });
  if (reason) params.set("reason", reason);
  return `${config.urls.login}?${params}`;
}

export async function signOut() {
  try {
    await api("/auth/logout", { method: "POST", anonymous: true });
  } catch {
    // Signed out already, or offline: the sign-in page is where we go either way.
  }
  location.assign(config.urls.login);
}

export function watchSession() {
  const dialog = document.getElementById("session-warning");
  if (!dialog || !config.user) return;
  const body = document.getElementById("session-warning-body");
  const idleMs = config.idle_seconds * 1000;
  let endsAt = Date.now() + idleMs;
  let warnTimer = 0;
  let endTimer = 0;
  let ticker = 0;

  const close = () => {
    clearInterval(ticker);
    if (dialog.open) dialog.close();
  };
  const tick = () => {
    const seconds = Math.max(0, Math.ceil((endsAt - Date.now()) / 1000));
    body.textContent = t("session_warning_body", { seconds });
  };
  const warn = () => {
    tick();
    ticker = setInterval(tick, 1000);
    if (!dialog.open) dialog.showModal();
    document.getElementById("session-stay").focus();
  };
  const expire = async () => {
    close();
    try {
      await api("/auth/logout", { method: "POST", anonymous: true });
    } catch {
      // The server ended the session already.
    }
    location.assign(signInUrl("idle"));
  };
  const restart = () => {
    endsAt = Date.now() + idleMs;
    clearTimeout(warnTimer);
    clearTimeout(endTimer);
    warnTimer = setTimeout(warn, Math.max(0, idleMs - WARN_SECONDS * 1000));
    endTimer = setTimeout(expire, idleMs);
    close();
  };

  document.getElementById("session-stay").addEventListener("click", async () => {
    try {
      await api("/auth/session"); // restarts the clocks through `console:activity`
    } catch {
      location.assign(signInUrl("idle"));
    }
  });
  document.getElementById("session-leave").addEventListener("click", signOut);
  dialog.addEventListener("cancel", (event) => {
    event.preventDefault(); // Esc keeps the doctor signed in, as the safe choice
    document.getElementById("session-stay").click();
  });
  window.addEventListener("console:activity", restart);
  window.addEventListener("console:signed-out", () => location.assign(signInUrl("idle")));
  restart();
}
