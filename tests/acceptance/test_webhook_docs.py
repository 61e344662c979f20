"""The webhook documentation cannot rot: its examples are what propagator sends and loads.

``docs/webhooks.md`` is checked here the way ``test_docs.py`` checks the README: every
fenced block is either checked or an illustration. The configuration example loads;
the key table states each key's default; the payload example is what
``delivery_body`` produces (numbers byte for byte); the signature example verifies;
the JSON Schema accepts real bodies and refuses what propagator never sends; and the
receiver in ``docs/examples/webhook_receiver.py``, written from the documentation
alone, is run and sent real requests by propagator's own HTTP client.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from propagator.adapters.webhook_http import Answer, WebhookClient
from propagator.cli import build_parser
from propagator.core.outbox import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    Batch,
    DeliveryFilter,
    Gap,
    OutboxRow,
    delivery_body,
    delivery_id,
    sign,
)
from propagator.core.vocabulary import SOURCES
from propagator.observability.webhook_metrics import WebhookMetrics
from propagator.settings import Settings, load_configuration
from propagator.settings.webhooks import WEBHOOK_KEYS, WebhookSettings
from tests.acceptance.docs_support import ROOT, section, shown_default
from tests.helpers import forget_settings_environment

DOCUMENT = "docs/webhooks.md"
SCHEMA = ROOT / "docs" / "webhook-payload.schema.json"
RECEIVER = ROOT / "docs" / "examples" / "webhook_receiver.py"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
CHECKED = {"toml", "json", "python"}
ILLUSTRATE = {"sh", "console", "text", "http"}
ENDPOINT = "planning"
SECRET = "receiver-test-secret-0123456789"


def blocks(document: str, language: str | None = None) -> list[tuple[str, str]]:
    """``(info string, code)`` of each fenced block, only ``language`` when given."""
    text = (ROOT / document).read_text(encoding="utf-8")
    found = [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)]
    return [b for b in found if language is None or b[0] == language]


# The changes the documentation's examples show, as the history reader hands them over
# (key and values are the JSON text PostgreSQL prints for jsonb).


def _at(minute: int, second: int, micro: int) -> datetime:
    return datetime(2026, 12, 5, 14, minute, second, micro, tzinfo=UTC)


def _row(row_id: int, key: tuple[int, str], old: str, new: str, **other: Any) -> OutboxRow:
    values: dict[str, Any] = {
        "mapping": "jobs",
        "source": "event",
        "field": "fab_order",
        "changed_at": _at(3, 21, 118204),
        "applied_at": _at(3, 21, 246871),
        **other,
    }
    label = f"{key[0]}-{key[1]}"
    return OutboxRow(
        row_id,
        key_json=json.dumps(list(key)),
        key_label=label,
        old_json=old,
        new_json=new,
        **values,
    )


def example_batch() -> Batch:
    """The payload example: one batch of two events, and a change a reconcile found later.

    4119 (a paint_color change the endpoint does not want) is passed over.
    """
    return Batch(
        (
            _row(4117, (10001, "A"), "500.00", "510.00"),
            _row(4118, (10002, "B"), "750.00", "800.00"),
            _row(
                4120,
                (10007, "A"),
                "null",
                "125.50",
                source="reconcile",
                changed_at=None,
                applied_at=_at(10, 0, 512330),
            ),
        ),
        cursor_after=4120,
    )


def gap_batch() -> Batch:
    """A gap notice alone: 3991 to 4116 were pruned before the endpoint received them."""
    return Batch((), cursor_after=4116, gap=Gap(3990, 4116))


def gap_and_changes_batch() -> Batch:
    return Batch(example_batch().changes[:1], cursor_after=4117, gap=Gap(3990, 4116))


def every_source_batch() -> Batch:
    rows = tuple(
        _row(
            5000 + n,
            (20000 + n, "C"),
            '"red"',
            '"blue"',
            source=source,
            field="paint_color",
            changed_at=None if source != "event" else _at(20, n, 0),
        )
        for n, source in enumerate(SOURCES)
    )
    return Batch(rows, cursor_after=rows[-1].id)


PAYLOADS = {
    "changes": example_batch,
    "gap_only": gap_batch,
    "gap_and_changes": gap_and_changes_batch,
    "every_source": every_source_batch,
}


class _Literal(str):
    """A JSON number kept as written (``500.00`` is not ``500.0`` here)."""


def tokens(text: str | bytes) -> Any:
    """JSON with numbers as their text and objects as ordered pairs: layout aside, exact."""
    return json.loads(text, object_pairs_hook=list, parse_float=_Literal, parse_int=_Literal)


# The document's blocks, configuration and references.


def test_every_block_is_checked_or_an_illustration() -> None:
    """Each fenced block has an info string saying whether this test checks it."""
    unknown = [lang for lang, _ in blocks(DOCUMENT) if lang not in CHECKED | ILLUSTRATE]
    assert unknown == [], f"blocks without a known info string: {unknown}"
    for language in CHECKED:
        assert blocks(DOCUMENT, language), f"{DOCUMENT} has no {language} block"


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Nothing from the environment: the file (and the secrets set by the test) decide."""
    forget_settings_environment(monkeypatch)
    return monkeypatch


@pytest.mark.parametrize("document", [DOCUMENT, "README.md"])
def test_webhook_configuration_examples_load(
    document: str, tmp_path: Path, clean_environment: pytest.MonkeyPatch
) -> None:
    """Every toml block with ``[[webhooks]]`` loads as ``--config``, secrets from the env."""
    examples = [code for _, code in blocks(document, "toml") if "[[webhooks]]" in code]
    assert examples, f"{document} has no [[webhooks]] example"
    for code in examples:
        names = re.findall(r'^name = "([a-z0-9_]+)"', code, re.MULTILINE)
        for name in names:
            clean_environment.setenv(f"PROPAGATOR_WEBHOOK_{name.upper()}_SECRET", SECRET)
        path = tmp_path / "propagator.toml"
        path.write_text(code, encoding="utf-8")
        webhooks = load_configuration(path).webhooks
        assert webhooks, code
        assert all(w.secret == SECRET for w in webhooks), "secrets come from the environment"
        assert "secret =" not in code, "examples keep secrets out of the file"


def test_the_main_example_means_what_the_text_says(
    tmp_path: Path, clean_environment: pytest.MonkeyPatch
) -> None:
    """The first example: ``planning`` wants jobs' fab_order, spelling out the default
    timings; ``audit`` wants everything, with the defaults."""
    code = next(c for _, c in blocks(DOCUMENT, "toml") if "[[webhooks]]" in c)
    clean_environment.setenv("PROPAGATOR_WEBHOOK_PLANNING_SECRET", SECRET)
    clean_environment.setenv("PROPAGATOR_WEBHOOK_AUDIT_SECRET", SECRET)
    path = tmp_path / "propagator.toml"
    path.write_text(code, encoding="utf-8")
    found = {w.name: w for w in load_configuration(path).webhooks}
    planning, audit = found[ENDPOINT], found["audit"]
    assert planning.wanted == DeliveryFilter(mappings=("jobs",), fields=("fab_order",))
    assert audit.wanted == DeliveryFilter()
    timings = ("max_batch", "max_wait", "timeout", "retry_initial", "retry_max", "failing_after")
    for key in timings:
        assert getattr(planning, key) == getattr(audit, key), key
    assert not planning.allow_insecure_http
    assert not audit.allow_insecure_http


def test_every_key_is_documented_with_its_default() -> None:
    """The key table names every ``[[webhooks]]`` key, and its default where it has one."""
    reference = section(DOCUMENT, "Configuration")
    cells = {
        line.split("|")[1].strip(" `"): line.split("|")[2].strip()
        for line in reference.splitlines()
        if line.startswith("| `")
    }
    defaults = {f.name: f.default for f in dataclasses.fields(WebhookSettings)}
    for key in WEBHOOK_KEYS:
        assert key in cells, f"{DOCUMENT} lacks the key {key}"
        shown = shown_default(defaults.get(key), text=False)
        if shown is not None:
            assert cells[key] == f"`{shown}`", f"{DOCUMENT}: default of {key}"
    hold = Settings.model_fields["webhook_hold_max"].default
    shown_hold = shown_default(hold, text=False)
    assert (
        f"`webhook_hold_max` (`PROPAGATOR_WEBHOOK_HOLD_MAX`, default `{shown_hold}`)" in reference
    )
    assert "PROPAGATOR_WEBHOOK_<NAME>_SECRET" in reference


def test_every_metric_alert_and_command_is_documented() -> None:
    """Both documents name every webhook metric; the guide, the alerts and each command's
    synopsis with every option."""
    registry = CollectorRegistry()
    WebhookMetrics(registry, [ENDPOINT])
    names = []
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        names.append(family.name + suffix)
    assert len(names) == 6
    guide = (ROOT / DOCUMENT).read_text(encoding="utf-8")
    metrics = section("README.md", "Metrics reference")
    for name in names:
        assert f"`{name}`" in guide, f"{DOCUMENT} lacks {name}"
        assert f"`{name}`" in metrics, f"README lacks {name}"
    for alert in ("PropagatorWebhookFailing", "PropagatorWebhookLagging"):
        assert f"`{alert}`" in guide
    for name, command in _subcommands(_subcommands(build_parser())["webhooks"]).items():
        spans = re.findall(rf"`(propagator webhooks {name}\b[^`]*)`", guide)
        assert spans, f"{DOCUMENT} lacks propagator webhooks {name}"
        synopsis = max(spans, key=len)
        for action in command._actions:
            for option in action.option_strings:
                if option.startswith("--") and option not in ("--help", "--mapping"):
                    shown = re.search(rf"(?<![\w-]){option}(?![\w-])", synopsis)
                    assert shown, f"{synopsis} lacks {option}"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_links_resolve() -> None:
    """Relative links of the guide point at files that exist; the README links the guide."""
    text = (ROOT / DOCUMENT).read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)\)", text):
        assert (ROOT / DOCUMENT).parent.joinpath(target).resolve().exists(), target
    assert "(docs/webhooks.md)" in section("README.md", "Webhooks")


# The payload: the documented example, the signature example and the schema.


def test_payload_example_is_what_propagator_sends() -> None:
    """The json block is ``delivery_body`` of the example changes, laid out for reading."""
    (shown,) = [code for _, code in blocks(DOCUMENT, "json")]
    body = delivery_body(example_batch(), ENDPOINT)
    assert tokens(shown) == tokens(body)
    assert f"`{DELIVERY_HEADER}: {delivery_id(example_batch())}`" in (ROOT / DOCUMENT).read_text(
        encoding="utf-8"
    )


def test_signature_example_verifies() -> None:
    """The signed request shown is ``sign`` over its body with the secret the text names."""
    text = (ROOT / DOCUMENT).read_text(encoding="utf-8")
    (example,) = [code for _, code in blocks(DOCUMENT, "http") if SIGNATURE_HEADER in code]
    secret = re.search(r"with the secret `([^`]+)`", text)
    assert secret, "the guide names the secret of its signature example"
    head, body = example.split("\n\n", 1)
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    body_bytes = body.rstrip("\n").encode()
    assert body_bytes == delivery_body(gap_batch(), ENDPOINT)
    assert headers[DELIVERY_HEADER] == delivery_id(gap_batch())
    timestamp = int(headers[SIGNATURE_HEADER].split(",")[0].removeprefix("t="))
    assert headers[SIGNATURE_HEADER] == sign(secret[1], timestamp, body_bytes)
    assert headers["Content-Type"] == "application/json"
    assert headers["Content-Length"] == str(len(body_bytes))


def _schema() -> dict[str, Any]:
    return dict(json.loads(SCHEMA.read_text(encoding="utf-8")))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_real_payloads_match_the_schema(payload: str) -> None:
    """Bodies ``delivery_body`` makes (changes, a gap, both, every source) are valid."""
    body = json.loads(delivery_body(PAYLOADS[payload](), ENDPOINT))
    assert structural_errors(_schema(), body) == []
    validator = _jsonschema_validator()
    if validator is not None:
        assert [e.message for e in validator.iter_errors(body)] == []


def _mutations() -> Iterator[tuple[str, dict[str, Any]]]:
    def body() -> dict[str, Any]:
        return dict(json.loads(delivery_body(example_batch(), ENDPOINT)))

    changed = body()
    changed["changes"][0]["source"] = "import"
    yield "an unknown source", changed
    changed = body()
    changed["changes"][1]["extra"] = 1
    yield "an unknown change field", changed
    changed = body()
    del changed["changes"][2]["production_committed_at"]
    yield "a missing change field", changed
    changed = body()
    changed["gap"] = {"after_id": 1}
    yield "a gap without its ids", changed
    changed = body()
    changed["changes"][0]["sandbox_committed_at"] = "yesterday"
    yield "a time that is not RFC 3339", changed
    changed = body()
    changed["version"] = 2
    yield "another version", changed


@pytest.mark.parametrize(("what", "body"), list(_mutations()), ids=[m[0] for m in _mutations()])
def test_schema_refuses_what_propagator_never_sends(what: str, body: dict[str, Any]) -> None:
    assert structural_errors(_schema(), body), what
    validator = _jsonschema_validator()
    if validator is not None and what != "a time that is not RFC 3339":  # format: annotation
        assert list(validator.iter_errors(body)), what


def test_schema_is_draft_2020_12_and_the_fallback_knows_its_words() -> None:
    schema = _schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    validator = _jsonschema_validator()
    if validator is not None:
        type(validator).check_schema(schema)
    unknown = _keywords(schema) - KNOWN_KEYWORDS
    assert unknown == set(), f"structural_errors() does not check {unknown}"
    change = schema["$defs"]["change"]
    assert set(change["required"]) == set(example_batch().changes[0].as_change())
    assert change["properties"]["source"]["enum"] == list(SOURCES)


def _jsonschema_validator() -> Any:
    """A draft 2020-12 validator when ``jsonschema`` is installed, else None."""
    try:
        import jsonschema  # optional: not a declared dependency
    except ImportError:
        return None
    return jsonschema.Draft202012Validator(_schema())


# A structural check of the schema's own words, so the test holds without jsonschema
# (which does not check "format" unless more packages are installed either).

KNOWN_KEYWORDS = {
    "$schema",
    "title",
    "description",
    "$defs",
    "$ref",
    "anyOf",
    "type",
    "const",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "minItems",
    "minimum",
    "pattern",
    "format",
}
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
DATE_TIME = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", re.IGNORECASE | re.ASCII
)


def _keywords(schema: Any) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    found = set(schema)
    for key, value in schema.items():
        if key in ("properties", "$defs"):
            found |= {k for v in value.values() for k in _keywords(v)}
        elif key == "anyOf":
            found |= {k for v in value for k in _keywords(v)}
        elif isinstance(value, dict):
            found |= _keywords(value)
    return found


def _is_type(value: Any, name: str) -> bool:
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, JSON_TYPES[name])


def structural_errors(
    schema: dict[str, Any], value: Any, root: Any = None, at: str = "$"
) -> list[str]:
    """What in ``value`` breaks ``schema`` (the keywords in KNOWN_KEYWORDS only)."""
    root = root or schema
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return structural_errors(target, value, root, at)
    if "anyOf" in schema and all(structural_errors(s, value, root, at) for s in schema["anyOf"]):
        return [f"{at}: matches none of anyOf"]
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if types and not any(_is_type(value, t) for t in types):
        return [f"{at}: not {types}"]
    errors = _scalar_errors(schema, value, at)
    if isinstance(value, dict):
        errors += _object_errors(schema, value, root, at)
    if isinstance(value, list) and "items" in schema:
        for number, item in enumerate(value):
            errors += structural_errors(schema["items"], item, root, f"{at}[{number}]")
    return errors


def _scalar_errors(schema: dict[str, Any], value: Any, at: str) -> list[str]:
    errors = []
    if "const" in schema and (value != schema["const"] or type(value) is bool):
        errors.append(f"{at}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: not one of {schema['enum']}")
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{at}: does not match {schema['pattern']}")
    if (
        isinstance(value, str)
        and schema.get("format") == "date-time"
        and not DATE_TIME.fullmatch(value)
    ):
        errors.append(f"{at}: not an RFC 3339 date-time")
    if _is_type(value, "integer") and value < schema.get("minimum", value):
        errors.append(f"{at}: below {schema['minimum']}")
    if isinstance(value, list) and len(value) < schema.get("minItems", 0):
        errors.append(f"{at}: fewer than {schema['minItems']} items")
    return errors


def _object_errors(schema: dict[str, Any], value: dict[str, Any], root: Any, at: str) -> list[str]:
    properties = schema.get("properties", {})
    errors = [f"{at}: lacks {name}" for name in schema.get("required", []) if name not in value]
    if schema.get("additionalProperties") is False:
        errors += [f"{at}: unexpected {name}" for name in value if name not in properties]
    for name, item in value.items():
        if name in properties:
            errors += structural_errors(properties[name], item, root, f"{at}.{name}")
    return errors


# The receiver: the example file, run as a reader would run it, sent real requests.


def test_the_guide_shows_the_receivers_own_code() -> None:
    """Each python block of the guide is a verbatim part of the example receiver."""
    receiver = RECEIVER.read_text(encoding="utf-8")
    for _, code in blocks(DOCUMENT, "python"):
        assert code in receiver, "the guide's python blocks are copied from the receiver"
    assert "docs/examples/webhook_receiver.py" in (ROOT / DOCUMENT).read_text(encoding="utf-8")
    imported = set(re.findall(r"^(?:from|import) ([a-z_.]+)", receiver, re.MULTILINE))
    assert imported <= {
        "__future__",
        "decimal",
        "hashlib",
        "hmac",
        "http.server",
        "json",
        "os",
        "sys",
        "threading",
        "time",
        "typing",
    }, imported


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    """The example receiver on a free loopback port; its URL."""
    env = {**os.environ, "WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, str(RECEIVER), "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)/", first)
            assert found, f"the receiver did not start: {first!r}"
            yield f"{found[1]}/hooks/propagator"
        finally:
            process.terminate()
            process.wait(timeout=10)


def _post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
    client = WebhookClient(url, timeout=5.0, user_agent="propagator/test")
    try:
        return client.post(body, headers)
    finally:
        client.close()


def _signed(batch: Batch, *, secret: str = SECRET, age: int = 0) -> tuple[bytes, dict[str, str]]:
    body = delivery_body(batch, ENDPOINT)
    signature = sign(secret, int(time.time()) - age, body)
    return body, {DELIVERY_HEADER: delivery_id(batch), SIGNATURE_HEADER: signature}


def test_receiver_accepts_signed_requests_and_skips_repeats(receiver: str) -> None:
    """A good request is answered 2xx; sent again (a retry, a replay) nothing is redone."""
    first = _post(receiver, *_signed(example_batch()))
    assert first.ok, first.describe()
    assert json.loads(first.body_prefix) == {"new": 3, "repeated": 0}
    again = _post(receiver, *_signed(example_batch()))
    assert again.ok, again.describe()
    assert json.loads(again.body_prefix) == {"new": 0, "repeated": 3}
    notice = _post(receiver, *_signed(Batch((), 4200, Gap(4120, 4200))))
    assert notice.ok, notice.describe()
    later = _post(receiver, *_signed(every_source_batch()))
    assert json.loads(later.body_prefix) == {"new": len(SOURCES), "repeated": 0}


def _tampered() -> tuple[bytes, dict[str, str]]:
    body, headers = _signed(gap_batch())
    return body.replace(b"4116", b"4117"), headers


def _unsigned() -> tuple[bytes, dict[str, str]]:
    return delivery_body(gap_batch(), ENDPOINT), {}


def _malformed() -> tuple[bytes, dict[str, str]]:
    return delivery_body(gap_batch(), ENDPOINT), {SIGNATURE_HEADER: "v1=00,t=x"}


REFUSED = {
    "a wrong secret": lambda: _signed(gap_batch(), secret="another-secret-0123456789"),
    "a changed body": _tampered,
    "a stale timestamp": lambda: _signed(gap_batch(), age=600),
    "a timestamp from the future": lambda: _signed(gap_batch(), age=-600),
    "no signature": _unsigned,
    "a malformed signature": _malformed,
}


@pytest.mark.parametrize("what", REFUSED)
def test_receiver_refuses_what_it_cannot_verify(receiver: str, what: str) -> None:
    """Anything but a fresh signature by the shared secret over the exact body is a 401."""
    answer = _post(receiver, *REFUSED[what]())
    assert answer.status == 401, f"{what}: {answer.describe()}"
