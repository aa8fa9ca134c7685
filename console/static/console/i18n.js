// The page's words and configuration, rendered by the server as JSON script elements
// (console/i18n.py, console/pages.py): nothing here knows a text or a URL by heart.

const read = (id) => JSON.parse(document.getElementById(id).textContent);

const messages = read("console-i18n");

/** The page's configuration: language, API root, the signed-in user, URLs. */
export const config = read("console-config");

/** The text of `key` in the page's language, with `{name}` placeholders filled in. */
export function t(key, vars = {}) {
  let text = messages[key] ?? key;
  for (const [name, value] of Object.entries(vars)) {
    text = text.replaceAll(`{${name}}`, String(value));
  }
  return text;
}

const dateTime = new Intl.DateTimeFormat(config.lang === "en" ? "en-GB" : "zh-CN", {
  timeZone: "Asia/Shanghai",
  dateStyle: "short",
  timeStyle: "short",
});
const timeOnly = new Intl.DateTimeFormat(config.lang === "en" ? "en-GB" : "zh-CN", {
  timeZone: "Asia/Shanghai",
  timeStyle: "short",
});

/** An RFC 3339 time from the API, shown in Beijing time. */
export function formatTime(iso, { short = false } = {}) {
  if (!iso) return "";
  return (short ? timeOnly : dateTime).format(new Date(iso));
}
