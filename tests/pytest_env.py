"""Test-session environment, set before Django's settings are imported.

Tests run in demo mode (generated secrets) in a private ``VAR_DIR`` per xdist worker,
against whatever ``DATABASE_URL``/``REDIS_URL`` say: the embedded default (SQLite,
in-memory channel layer) when they are unset, the real PostgreSQL and Redis in CI, where
``REQUIRE_SERVICES=1`` turns a missing service into a failure instead of a skip.
"""

from __future__ import annotations

import os
import tempfile

_worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
os.environ["DEMO_MODE"] = "1"
# Set, not defaulted: an xdist worker inherits the controller's environment, and with
# the controller's directory every worker shared one static root, which one worker's
# ``collectstatic`` (the browser tests' server) rewrote while another's WhiteNoise was
# reading it (a FileNotFoundError in an unrelated test, seen in CI).
os.environ["VAR_DIR"] = tempfile.mkdtemp(prefix=f"ih-test-{_worker}-")
os.environ["CHANNEL_LAYER_PREFIX"] = f"ih-test-{os.getpid()}-{_worker}"
os.environ["CACHE_KEY_PREFIX"] = f"ih-test-{os.getpid()}-{_worker}"
os.environ["CELERY_DEFAULT_QUEUE"] = f"ih-test-{os.getpid()}-{_worker}"
os.makedirs(os.path.join(os.environ["VAR_DIR"], "static"), exist_ok=True)
