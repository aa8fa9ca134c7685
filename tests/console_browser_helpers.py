"""What the console's browser tests stand on: a real Daphne process serving the test
database (HTTP and WebSockets), Debian's Chromium driven by Playwright, a patient scripted
over the mobile API and a real WebSocket client, screenshots, and the accessibility and
keyboard checks every page must pass.

Nothing is mocked. The server is ``daphne backend.asgi:application`` on the database the
tests write (PostgreSQL, or the embedded default's SQLite file: both can be shared with a
second process), with the channel layer of the run (Redis, or in-memory, which is enough
since every push is made by the server process itself: the patient and the doctor both
reach that process over HTTP and WebSockets).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from backend.identity.models import User
from backend.identity.services import api_token_create, totp_code_at
from tests.conftest import REQUIRE_SERVICES, uses_postgres
from tests.factories import PASSWORD

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MOBILE = "/api/mobile/v1"
CONSOLE = "/api/console/v1"


# --- the server and the browser --------------------------------------------------------------


def require_chromium() -> str:
    """Debian's Chromium; skip without it, or fail under REQUIRE_SERVICES=1 (CI installs it
    in .ci/run, so a missing browser there is a broken run, never a silent skip)."""
    if CHROMIUM.exists():
        return str(CHROMIUM)
    reason = (
        f"the console's browser tests need Debian's Chromium at {CHROMIUM} "
        "(apt-get install chromium; .ci/run installs it)"
    )
    if REQUIRE_SERVICES:
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shared_database_url() -> str:
    """The database this test process really uses (pytest-django's test database), as a
    URL a second process can open."""
    db = connection.settings_dict
    if uses_postgres():
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        host = db.get("HOST") or "127.0.0.1"
        return f"postgres://{db['USER']}{password}@{host}:{db.get('PORT') or 5432}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


@contextlib.contextmanager
def daphne_server(log: Path) -> Iterator[str]:
    """``daphne backend.asgi:application`` on a free port, on the test database, with this
    process's secrets (same ``VAR_DIR``), channel-layer and cache prefixes; its static
    files collected first (whitenoise serves what collectstatic wrote)."""
    call_command(
        "collectstatic",
        interactive=False,
        verbosity=0,
        # Only what the console's pages load: the API docs' bundles are large.
        ignore_patterns=["drf_spectacular_sidecar", "admin", "rest_framework"],
    )
    port = _free_port()
    env = {**os.environ, "DEMO_MODE": "1", "DATABASE_URL": shared_database_url()}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)  # the server keeps Django's async checks
    with log.open("wb") as output:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "backend.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, f"daphne exited:\n{log.read_text()}"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"daphne did not start:\n{log.read_text()}"
                time.sleep(0.2)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, never a browser Playwright would download."""
    executable = require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


# --- accounts ------------------------------------------------------------------------------


def with_server_password(user: User) -> User:
    """Give ``user`` the password ``PASSWORD`` hashed with the server's own hasher (the
    tests' fast hasher is configured in this process only)."""
    hasher = PBKDF2PasswordHasher()
    user.password = hasher.encode(PASSWORD, hasher.salt())
    user.save(update_fields=["password"])
    return user


def otp(user: User, *, steps_ahead: int = 0) -> str:
    """The authenticator code of ``user`` now (or ``steps_ahead`` 30-second steps away: a
    wrong code). Forgets the last step used, standing in for the wait for a new code."""
    User.objects.filter(pk=user.pk).update(totp_last_step=0)
    user.refresh_from_db()
    assert user.totp_secret
    when = timezone.now() + dt.timedelta(seconds=30 * steps_ahead)
    return totp_code_at(secret=user.totp_secret, when=when)


def signed_in_context(browser: Browser, base: str, user: User, **options: Any) -> BrowserContext:
    """A browser context already signed in as ``user`` (through the API, as the sign-in
    page does; the sign-in page itself has its own test)."""
    with httpx.Client(base_url=base, timeout=10) as client:
        csrf = client.get(f"{CONSOLE}/auth/csrf").json()["csrf_token"]
        client.headers["X-CSRFToken"] = csrf
        login = client.post(
            f"{CONSOLE}/auth/login", json={"username": user.username, "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        if login.json()["second_factor_required"]:
            totp = client.post(f"{CONSOLE}/auth/totp", json={"code": otp(user)})
            assert totp.status_code == 200, totp.text
        cookies = [
            {"name": name, "value": value, "url": base}
            for name, value in client.cookies.items()
            if name in ("sessionid", "csrftoken")
        ]
    context = browser.new_context(**options)
    context.add_cookies(cookies)  # type: ignore[arg-type]
    return context


# --- the patient ---------------------------------------------------------------------------


class ScriptedPatient:
    """A patient's app: the mobile API with an API token, and the consultation's WebSocket
    read in a background thread so that no frame is missed."""

    def __init__(self, base: str, account: User) -> None:
        self.base = base
        self.http = httpx.Client(
            base_url=base,
            headers={"Authorization": f"Token {api_token_create(user=account, name='app').key}"},
            timeout=10,
        )
        self.ws: ClientConnection | None = None
        self.sockets = contextlib.ExitStack()
        self.frames: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def request(self, profile: Any, department: Any, complaint: str) -> str:
        response = self.http.post(
            f"{MOBILE}/consultations",
            json={
                "profile": str(profile.pk),
                "department": str(department.pk),
                "complaint": complaint,
            },
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def connect(self, consultation_id: str) -> None:
        ticket = self.http.post(f"{MOBILE}/consultations/{consultation_id}/ws-ticket")
        assert ticket.status_code == 201, ticket.text
        url = self.base.replace("http://", "ws://")
        self.ws = self.sockets.enter_context(
            connect(
                f"{url}/ws/consultations/{consultation_id}/?ticket={ticket.json()['ticket']}",
                origin=Origin("http://127.0.0.1"),
            )
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(lambda f: f["type"] == "sync")

    def _read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(Exception):
            for raw in self.ws:
                with self.lock:
                    self.frames.append(json.loads(raw))

    def send(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        self.ws.send(json.dumps(frame))

    def say(self, text: str) -> int:
        """Send a text message and wait for its ack; answers its seq."""
        msg_id = str(uuid.uuid4())
        self.send({"type": "message.send", "client_msg_id": msg_id, "kind": "text", "text": text})
        [ack] = self.wait_for(lambda f: f["type"] == "message.ack" and f["client_msg_id"] == msg_id)
        return int(ack["seq"])

    def show_image(self, consultation_id: str, name: str, content: bytes) -> int:
        upload = self.http.post(
            f"{MOBILE}/consultations/{consultation_id}/attachments",
            files={"file": (name, content, "image/png")},
        )
        assert upload.status_code == 201, upload.text
        msg_id = str(uuid.uuid4())
        self.send(
            {
                "type": "message.send",
                "client_msg_id": msg_id,
                "kind": "image",
                "attachment_id": upload.json()["id"],
            }
        )
        [ack] = self.wait_for(lambda f: f["type"] == "message.ack" and f["client_msg_id"] == msg_id)
        return int(ack["seq"])

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [f for f in self.frames if f["type"] == kind]

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [f for f in self.frames if predicate(f)]
            if found:
                return found
            time.sleep(0.02)
        with self.lock:
            raise AssertionError(f"no matching frame; the last ones: {self.frames[-5:]}")

    def close(self) -> None:
        self.sockets.close()
        self.http.close()


# --- what every page must pass ---------------------------------------------------------------

_ACCESSIBILITY_PROBLEMS = """() => {
  const problems = [];
  const text = (el) => (el ? el.textContent.trim() : "");
  const named = (el) =>
    (el.getAttribute("aria-label") || "").trim() ||
    (el.getAttribute("aria-labelledby") || "")
      .split(/\\s+/).map((id) => text(document.getElementById(id))).join(" ").trim() ||
    text(el) || (el.getAttribute("title") || "").trim() ||
    [...el.querySelectorAll("img[alt]")].map((img) => img.alt).join(" ").trim();
  if (!document.documentElement.lang) problems.push("html[lang] is not set");
  if (document.querySelectorAll("main").length !== 1) problems.push("not exactly one <main>");
  if (!document.querySelector("nav")) problems.push("no <nav>");
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden") continue;
    const labelled = (el.labels && el.labels.length && [...el.labels].some((l) => text(l))) ||
      (el.getAttribute("aria-label") || "").trim() || el.getAttribute("aria-labelledby");
    if (!labelled) problems.push(`no label: ${el.outerHTML.slice(0, 120)}`);
  }
  for (const el of document.querySelectorAll("button, a[href], [role=button], [role=switch]")) {
    if (!named(el)) problems.push(`no accessible name: ${el.outerHTML.slice(0, 120)}`);
  }
  for (const img of document.querySelectorAll("img")) {
    if (!img.hasAttribute("alt")) problems.push(`no alt: ${img.outerHTML.slice(0, 120)}`);
  }
  return problems;
}"""


def accessibility_problems(page: Page) -> list[str]:
    """The basic checks: ``html[lang]``, one ``<main>`` and a ``<nav>``, a label for every
    input, select and textarea, an accessible name for every button and link, alt text."""
    problems: list[str] = page.evaluate(_ACCESSIBILITY_PROBLEMS)
    return problems


def tab_to(page: Page, selector: str, *, presses: int = 25) -> None:
    """Press Tab until the element ``selector`` has the focus (keyboard only)."""
    for _ in range(presses):
        if page.evaluate("(s) => document.activeElement?.matches(s) ?? false", selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{selector} is not reachable with Tab in {presses} presses")


class Screenshots:
    """Saves a full-page screenshot per step into a folder, with an index of what each
    one shows (``INDEX.md``)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder

    def take(self, page: Page, name: str, shows: str) -> Path:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        index = self.folder / "INDEX.md"
        lines = index.read_text().splitlines() if index.exists() else ["# Console screenshots"]
        lines = [line for line in lines if not line.startswith(f"- `{path.name}`")]
        lines.append(f"- `{path.name}`: {shows}")
        index.write_text("\n".join(lines) + "\n")
        return path


# --- a browser with extra switches (the video call's fake camera) -----------------------------

#: A camera and microphone that need no device and no permission prompt: Chromium's test
#: pattern and beep, granted at once (the video-call test, tests/test_console_call_browser.py).
FAKE_MEDIA_ARGS = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


@contextlib.contextmanager
def chromium_with(extra_args: tuple[str, ...] = ()) -> Iterator[Browser]:
    """``chromium()`` with more command-line switches (``CHROMIUM_ARGS`` + ``extra_args``)."""
    executable = require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=[*CHROMIUM_ARGS, *extra_args], headless=True
        )
        try:
            yield browser
        finally:
            browser.close()
