"""The status page as a person sees it: loaded in headless Chromium from a running daemon."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from propagator.testing import DaemonRunner
from tests.helpers import DatabasePair, wait_until
from tests.integration.http_support import request
from tests.integration.support import daemon_settings, install_triggers, seed

TOKEN = "page-token-5d1e8b"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (Debian: apt-get install chromium); the page is not loaded",
)


def browse(url: str, profile: Path, *, screenshot: Path | None = None) -> str:
    """The DOM after the page's scripts ran (``--dump-dom``), as headless Chromium renders it."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=390,844",  # a phone's screen
        "--virtual-time-budget=3000",
    ]
    command += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    result = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def text_of(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', dom, re.S)
    assert match, f"no element #{element_id} in the page"
    return match.group(1).strip()


@pytest.fixture
def daemon(databases: DatabasePair) -> Iterator[DaemonRunner]:
    """A caught-up leader with a token, mirroring fab_order and paint_color, 10 rows in sync."""
    settings = daemon_settings(databases, api_token=TOKEN, field_mappings="fab_order,paint_color")
    install_triggers(databases, settings)
    seed(databases, 10)
    databases.sandbox.execute("UPDATE jobs SET fab_order = job")
    with DaemonRunner(settings) as running:
        running.wait_caught_up()
        yield running


def test_status_page_shows_role_lag_and_a_production_change(
    databases: DatabasePair, daemon: DaemonRunner, tmp_path: Path
) -> None:
    """Chromium shows leader, the measured lag and a production change in the recent list."""
    assert daemon.daemon.http is not None
    url = f"http://127.0.0.1:{daemon.daemon.http.port}/"
    databases.production.execute(
        "UPDATE jobs SET fab_order = 4242.5, paint_color = '<b id=\"injected\">x</b>' WHERE job = 4"
    )
    wait_until(
        lambda: (
            daemon.daemon.last_lag is not None
            and databases.sandbox.scalar("SELECT fab_order FROM jobs WHERE job = 4") == 4242.5
        ),
        what="the change in the sandbox",
    )
    dom = browse(url, tmp_path / "profile")

    assert 'name="viewport"' in dom
    assert text_of(dom, "role") == "leader"
    assert re.fullmatch(r"\d+ ms|\d+\.\d s", text_of(dom, "lag")), text_of(dom, "lag")
    assert "production listener up" in text_of(dom, "connections")
    assert re.search(r'data-refreshed="\d+"', dom), "the page's script did not refresh it"
    table = dom.split('id="changes"', 1)[1].split("</tbody>", 1)[0]
    cells = [
        re.findall(r"<td>(.*?)</td>", row, re.S)
        for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)
    ]
    shown = [row[1:5] for row in cells]
    assert ["4-A", "fab_order", "4.00 → 4242.50", "event"] in shown
    stored_json = r'null → "&lt;b id=\"injected\"&gt;x&lt;/b&gt;"'  # a JSON string, as text
    assert ["4-A", "paint_color", stored_json, "event"] in shown
    assert all(re.fullmatch(r"\d+ ms|\d+\.\d s", row[5]) for row in cells if row[1] == "4-A")
    # The value typed into production shows as text, never as markup.
    assert not re.search(r"<b[\s>]", dom), "production text became markup"
    # A token is asked for, never carried by the page.
    assert 'id="token"' in dom
    assert TOKEN not in dom


def test_status_page_is_self_contained(databases: DatabasePair, daemon: DaemonRunner) -> None:
    """No external resources, a strict CSP, and the same page served to a plain HTTP client."""
    assert daemon.daemon.http is not None
    answer = request(daemon.daemon.http.port, "GET", "/")
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in answer.headers["content-security-policy"]
    body = answer.body.decode()
    assert not re.search(r"(src|href)=\"(https?:)?//", body)
    assert "Reconcile now" in body


READ_TOKEN = "page-read-token-7a41c0"


@pytest.fixture
def protected_daemon(databases: DatabasePair) -> Iterator[DaemonRunner]:
    """A caught-up leader whose page, /status and /history need the read token."""
    settings = daemon_settings(
        databases, api_token=TOKEN, read_token=READ_TOKEN, http_read_protection=True
    )
    seed(databases, 5)
    with DaemonRunner(settings) as running:
        running.wait_caught_up()
        yield running


def test_a_protected_page_works_for_a_person_given_the_token(
    protected_daemon: DaemonRunner, tmp_path: Path
) -> None:
    """Without the token Chromium shows no page; with it (Basic password) the page refreshes."""
    assert protected_daemon.daemon.http is not None
    port = protected_daemon.daemon.http.port
    refused = browse(f"http://127.0.0.1:{port}/", tmp_path / "anonymous")
    assert 'id="role"' not in refused  # the login prompt is refused headless: no page
    dom = browse(f"http://operator:{READ_TOKEN}@127.0.0.1:{port}/", tmp_path / "operator")
    assert text_of(dom, "role") == "leader"
    assert re.search(r'data-refreshed="\d+"', dom), "the page's refresh was refused"
    assert text_of(dom, "stale") == ""
    assert READ_TOKEN not in dom
