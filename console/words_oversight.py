"""The console's words for the regulator's and the hospital administrator's pages:
key → {"zh-hans", "en"}, merged into ``console.i18n.MESSAGES`` (a key defined twice
refuses to load)."""

WORDS: dict[str, dict[str, str]] = {}
