// Sign-in: the password, then (doctors and pharmacists) the authenticator code, through
// the console API; then the page asked for (`next`) or the role's home.

import { api, clearError, showError } from "./api.js";
import { config } from "./i18n.js";

const passwordForm = document.getElementById("password-form");
const totpForm = document.getElementById("totp-form");
const passwordError = document.getElementById("password-error");
const totpError = document.getElementById("totp-error");

function signedIn() {
  location.assign(config.next || config.urls.home);
}

function busy(form, on) {
  for (const control of form.querySelectorAll("button, input")) control.disabled = on;
  form.setAttribute("aria-busy", String(on));
}

async function submit(form, errorElement, path, body, onDone) {
  clearError(errorElement);
  busy(form, true);
  try {
    onDone(await api(path, { method: "POST", body, anonymous: true }));
  } catch (error) {
    busy(form, false);
    showError(errorElement, error);
    return false;
  }
  return true;
}

passwordForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  // The CSRF cookie is set by this page; ask again in case it was cleared meanwhile.
  await api("/auth/csrf", { anonymous: true }).catch(() => null);
  await submit(
    passwordForm,
    passwordError,
    "/auth/login",
    {
      username: document.getElementById("username").value.trim(),
      password: document.getElementById("password").value,
    },
    (answer) => {
      if (!answer.second_factor_required) {
        signedIn();
        return;
      }
      busy(passwordForm, false);
      passwordForm.hidden = true;
      totpForm.hidden = false;
      document.getElementById("totp-code").focus();
    },
  );
  if (!passwordError.hidden) document.getElementById("password").select();
});

totpForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const code = document.getElementById("totp-code");
  await submit(totpForm, totpError, "/auth/totp", { code: code.value.trim() }, signedIn);
  if (!totpError.hidden) {
    code.select();
    code.focus();
  }
});

document.getElementById("totp-back").addEventListener("click", () => {
  clearError(totpError);
  totpForm.hidden = true;
  passwordForm.hidden = false;
  document.getElementById("password").value = "";
  document.getElementById("password").focus();
});
