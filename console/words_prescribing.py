"""The console's words for the prescription editor (doctor) and the pharmacist's and
pharmacy's pages: key → {"zh-hans", "en"}, merged into ``console.i18n.MESSAGES`` (a key
defined twice refuses to load)."""

WORDS: dict[str, dict[str, str]] = {}
