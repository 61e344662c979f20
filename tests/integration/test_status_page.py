"""The status page as a person sees it: loaded in headless Chromium from a running daemon."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from propagator.errors import ConfigurationError
from propagator.observability.pages import add_web_routes
from propagator.testing import DaemonRunner
from tests.helpers import DatabasePair, wait_until
from tests.integration.http_support import request, serving
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


def rows_of(dom: str, body_id: str) -> list[list[str]]:
    """The cells of each row of ``<tbody id=body_id>``, as the DOM holds them (escaped)."""
    body = dom.split(f'id="{body_id}"', 1)[1].split("</tbody>", 1)[0]
    return [
        [cell.strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


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


# Several mappings, from routes serving a made-up status (no database needed).


def listed(name: str, pending: int, **extra: Any) -> dict[str, Any]:
    """One mapping's part of /status."""
    return {
        "name": name,
        "role": "leader",
        "connections": {"production_listener": True, "sandbox_lock": True, "writer": True},
        "pending_keys": pending,
        "in_flight_keys": 0,
        "last_reconcile": None,
        "last_lag_seconds": 0.05,
        "last_error": None,
        **extra,
    }


def two_mapping_status(pending: int) -> dict[str, Any]:
    """/status of a daemon serving ``jobs`` and ``orders`` (the first also flat at the top)."""
    jobs = listed("jobs", pending)
    orders = listed("orders", pending + 1, role="standby", last_error="<script>alert(1)</script>")
    flat = {key: value for key, value in jobs.items() if key != "name"}
    return {
        "instance_id": "made-up",
        "version": "0",
        **flat,
        "role": "mixed",
        "pending_keys": 2 * pending + 1,
        "mappings": [jobs, orders],
    }


def test_status_page_refreshes_every_mapping(tmp_path: Path) -> None:
    """The script refreshes the Mappings table from /status and names each change's mapping."""
    asked: list[str | None] = []

    async def history(params: Mapping[str, str | None]) -> dict[str, Any]:
        asked.append(params.get("mapping"))
        if params.get("mapping") != "*":
            raise ConfigurationError("the mappings write into 2 sandboxes: name one")
        newest = "orders" if len(asked) > 1 else "jobs"  # the page's first, then the script's
        change = {
            "mapping": newest,
            "applied_at": "2024-05-01T10:00:00+00:00",
            "key_label": "7",
            "field": "status",
            "old_json": '"open"',
            "new_json": '"shipped"',
            "source": "event",
            "lag_seconds": 0.01,
        }
        return {"entries": [change]}

    with serving() as running:
        running.probe.status = two_mapping_status(40)  # what /status answers the script
        add_web_routes(
            running.server,
            status=lambda: two_mapping_status(1),  # what the page is rendered with
            history=history,
            reconcile=None,
            api_token=None,
        )
        dom = browse(f"http://127.0.0.1:{running.port}/", tmp_path / "profile")

    assert re.search(r'data-refreshed="\d+"', dom), "the page's script did not refresh it"
    rows = rows_of(dom, "mappings")
    assert [row[:3] for row in rows] == [
        ["jobs", "leader", "all up"],
        ["orders", "standby", "all up"],
    ]
    assert [row[4] for row in rows] == ["40 (+0 in flight)", "41 (+0 in flight)"]
    assert rows[1][6] == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert text_of(dom, "role") == "mixed"
    assert text_of(dom, "pending") == "81 (+0 in flight)"
    assert text_of(dom, "last-error") == "1 mapping reports an error"
    assert [row[1:4] for row in rows_of(dom, "changes")] == [["orders", "7", "status"]]
    assert len(asked) >= 2
    assert set(asked) == {"*"}
