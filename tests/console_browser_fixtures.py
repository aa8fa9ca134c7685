"""The fixtures every browser test module of the console shares (a pytest plugin, loaded
by tests/conftest.py): one Daphne process on the test database and one Chromium per
module, the screenshot folder, and the ORM beside Playwright, which each browser module
asks for in its ``pytestmark``. A module that needs another browser (fake camera)
defines its own ``browser``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.console_browser_helpers import (
    Screenshots,
    accessibility_problems,
    chromium,
    daphne_server,
    require_chromium,
)


@pytest.fixture(scope="module")
def orm_beside_playwright() -> Iterator[None]:
    """Playwright's sync API keeps its event loop running in this thread between calls,
    and Django then refuses every ORM call as if it came from async code. Nothing runs
    concurrently here (the loop only serves Playwright), so the tests' own set-up and
    checks may use the ORM; the server process keeps Django's checks."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture(scope="module")
def server(django_db_setup: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_chromium()  # before starting anything
    with daphne_server(tmp_path_factory.mktemp("daphne") / "daphne.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser(server: str) -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Screenshots:
    folder = Path(
        os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path_factory.getbasetemp() / "screenshots"
    ).resolve()
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\nconsole screenshots: {folder}")
    return Screenshots(folder)


def watch(page: Page) -> list[str]:
    """Script errors on the page (each test ends with none)."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def accessible(page: Page) -> None:
    assert accessibility_problems(page) == []
