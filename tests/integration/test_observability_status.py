"""``propagator status`` against a real HTTP endpoint, run as a user would."""

from __future__ import annotations

import json
import socket

from propagator.errors import ExitCode
from propagator.observability.http import Request, Response
from tests.helpers import cli_env, run_cli
from tests.integration.http_support import serving

SECRET = "status-cli-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_status_prints_a_readable_summary_with_readiness() -> None:
    """The text form shows the daemon URL, readiness reasons and every status field, masked."""
    with serving() as running:
        running.probe.ready = False
        running.probe.reasons = ["catch-up reconcile running"]
        running.probe.status = {
            "state": "catching_up",
            "leader": True,
            "lag_seconds": 0.1234,
            "production": {"url": f"postgresql://u:{SECRET}@prod/db", "connected": True},
            "last_reconcile": None,
        }
        result = run_cli(["status", "--url", f"http://127.0.0.1:{running.port}"], cli_env())
    assert result.returncode == ExitCode.OK, result.stderr
    out = result.stdout
    assert f"propagator daemon at http://127.0.0.1:{running.port}" in out
    assert "NOT READY: catch-up reconcile running" in out
    assert "state:" in out
    assert "catching_up" in out
    assert "leader:" in out
    assert "yes" in out
    assert "0.123" in out
    assert "production:" in out
    assert "postgresql://u:***@prod/db" in out
    assert SECRET not in out


def test_status_json_is_the_status_document() -> None:
    """--format json prints /status as JSON, and a /status URL is accepted as is."""
    with serving() as running:
        running.probe.status = {"state": "running", "leader": False, "keys_buffered": 3}
        url = f"http://127.0.0.1:{running.port}/status"
        result = run_cli(["status", "--url", url, "--format", "json"], cli_env())
    assert result.returncode == ExitCode.OK, result.stderr
    assert json.loads(result.stdout) == {"state": "running", "leader": False, "keys_buffered": 3}


def test_status_defaults_to_the_configured_http_port() -> None:
    """Without --url the daemon is looked for at http_host:http_port from the settings."""
    with serving() as running:
        wildcard = "0.0.0.0"  # noqa: S104 - only a setting; the client turns it into loopback
        env = cli_env(PROPAGATOR_HTTP_HOST=wildcard, PROPAGATOR_HTTP_PORT=str(running.port))
        result = run_cli(["status", "--format", "json"], env)
    assert result.returncode == ExitCode.OK, result.stderr
    assert json.loads(result.stdout)["state"] == "running"


def test_status_with_nothing_listening_is_one_line_and_exit_3() -> None:
    """No daemon: one clear line on stderr, exit code 3, no traceback."""
    port = free_port()
    result = run_cli(["status", "--url", f"http://127.0.0.1:{port}"], cli_env())
    assert result.returncode == ExitCode.DATABASE_UNAVAILABLE
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"no propagator daemon answers at http://127.0.0.1:{port}/status" in lines[0]


def test_status_against_something_else_is_exit_3() -> None:
    """A server that is not a propagator daemon (404) is reported, not misread."""
    with serving() as running:
        running.server._routes.pop("/status")
        result = run_cli(["status", "--url", f"http://127.0.0.1:{running.port}"], cli_env())
    assert result.returncode == ExitCode.DATABASE_UNAVAILABLE
    assert "answered HTTP 404" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_sends_the_api_token_and_reports_a_refusal() -> None:
    """With api_token set it is sent as a bearer token; a refusal is exit 2 naming api_token."""

    async def guarded(request: Request) -> Response:
        if request.bearer_token() != "right-token":
            return Response.error(401, "unauthorized")
        return Response.json({"state": "running"})

    with serving() as running:
        running.server.add_route("GET", "/status", guarded)
        url = f"http://127.0.0.1:{running.port}"
        good = run_cli(["status", "--url", url], cli_env(PROPAGATOR_API_TOKEN="right-token"))
        bad = run_cli(["status", "--url", url], cli_env(PROPAGATOR_API_TOKEN="wrong-token"))
    assert good.returncode == ExitCode.OK, good.stderr
    assert "running" in good.stdout
    assert bad.returncode == ExitCode.USAGE
    assert "check api_token" in bad.stderr


def test_status_rejects_a_non_http_url() -> None:
    """A --url that is not http(s) is a usage error (exit 2), one line."""
    result = run_cli(["status", "--url", "ftp://example/"], cli_env())
    assert result.returncode == ExitCode.USAGE
    assert "--url must be an http:// address" in result.stderr
