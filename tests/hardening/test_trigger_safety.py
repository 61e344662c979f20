"""Production safety: the change trigger never fails a production statement, whatever the row.

``tests/integration/test_triggers.py`` covers NULL keys, a 10,000-character text
key, timestamptz keys and odd watched values; this adds keys of unusual types
(arrays, jsonb, bytea, NaN and infinite numerics and floats, infinite
timestamps), a 100 kB bytea key, key changes and a statement over the resync
threshold, all in explicit transactions that must commit. (Array and jsonb key
parts are sent as JSON arrays and objects, which the payload parser rejects as
``bad_keys``: such tables converge through the reconcile, not through events.)
"""

from __future__ import annotations

import json

import psycopg

from propagator.core.payload import Change, parse_notification
from propagator.services import triggers
from propagator.settings import load_settings
from tests.helpers import DatabasePair
from tests.integration.trigger_support import Listener

KEYS = ["a", "j", "b", "n", "f", "t"]
ODD_KEYS_TABLE = """
CREATE TABLE public.odd_keys (
    a int[], j jsonb, b bytea, n numeric, f float8, t timestamptz,
    v text, note text
)
"""
ROWS = [
    "(ARRAY[1, NULL], '{\"a\": [1, {\"b\": null}]}', '\\x00ff', 'NaN', 'NaN', 'infinity', 'x', '')",
    "('{}', 'null', '', 'Infinity', '-Infinity', '-infinity', 'y', '')",
    "('{{1,2},{3,4}}', '\"str\"', '\\x', '-Infinity', 1e308, now(), 'z', '')",
    "('{7}', '[]', '\\x01', 1e-300, -0.0, '2000-01-01', 'w', '')",
    "(NULL, NULL, NULL, NULL, NULL, NULL, 'null keys', '')",
]


def test_keys_of_unusual_types_never_fail_a_production_transaction(
    databases: DatabasePair,
) -> None:
    """Array, jsonb, bytea, NaN/Infinity keys: every statement commits and notifies v1."""
    production = databases.production
    production.execute(ODD_KEYS_TABLE)
    settings = load_settings(
        production_database_url=production.url,
        sandbox_database_url=databases.sandbox.url,
        production_table="public.odd_keys",
        key_columns=",".join(KEYS),
        field_mappings="v",
    )
    with psycopg.connect(production.url) as conn:
        triggers.install(conn, settings)
    listener = Listener(production)
    statements = [
        f"INSERT INTO odd_keys VALUES {', '.join(ROWS)}",
        "INSERT INTO odd_keys VALUES ('{9}', '{}', decode(repeat('ab', 100000), 'hex'), 1, 1,"
        " now(), 'big', '')",
        "UPDATE odd_keys SET v = v || '!'",
        "UPDATE odd_keys SET n = 'NaN' WHERE v = 'w!'",  # a key change: old and new key
        "UPDATE odd_keys SET note = 'unwatched'",
        "UPDATE odd_keys SET v = v",
        "INSERT INTO odd_keys SELECT ARRAY[g], to_jsonb(g), int4send(g), g, g, now(), 'bulk', ''"
        " FROM generate_series(1, 12000) AS g",  # over the resync threshold
        "DELETE FROM odd_keys",
    ]
    warnings: list[str] = []
    with production.connect() as conn:
        conn.autocommit = False
        conn.add_notice_handler(lambda notice: warnings.append(str(notice.message_primary)))
        for statement in statements:
            with conn.transaction():
                conn.execute(statement)
    assert production.scalar("SELECT count(*) FROM odd_keys") == 0
    payloads = listener.payloads()
    listener.conn.close()
    documents = [json.loads(payload) for payload in payloads]
    assert all(len(payload.encode()) < 8000 for payload in payloads)
    assert all(document["v"] == 1 for document in documents)
    # The 100 kB key cannot be listed in any payload: a resync, never a failure.
    assert any(document.get("resync") is True for document in documents)
    listed = [key for document in documents for key in document.get("k", [])]
    assert [key for key in listed if len(key) != len(KEYS)] == []
    assert any("NaN" in key for key in listed)
    assert any("Infinity" in key for key in listed)
    assert warnings == [], warnings  # nothing went wrong inside the trigger either


def test_scalar_keys_of_unusual_types_reach_the_daemon_parser(databases: DatabasePair) -> None:
    """bytea, NaN/Infinity numeric and float and infinite timestamp keys parse as v1 changes."""
    production = databases.production
    production.execute("CREATE TABLE odd (b bytea, n numeric, f float8, t timestamptz, v text)")
    settings = load_settings(
        production_database_url=production.url,
        sandbox_database_url=databases.sandbox.url,
        production_table="public.odd",
        key_columns="b,n,f,t",
        field_mappings="v",
    )
    with psycopg.connect(production.url) as conn:
        triggers.install(conn, settings)
    listener = Listener(production)
    production.execute(
        "INSERT INTO odd VALUES ('\\x00ff', 'NaN', 'NaN', 'infinity', 'x'),"
        " ('', '-Infinity', 'Infinity', '-infinity', 'y'), ('\\x01', 1e-300, -0.0, now(), 'z')"
    )
    (parsed,) = [parse_notification(p, key_width=4) for p in listener.payloads()]
    listener.conn.close()
    assert isinstance(parsed, Change)
    assert len(parsed.keys) == 3
    assert ("\\x00ff", "NaN", "NaN", "infinity") in parsed.keys
