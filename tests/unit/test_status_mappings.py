"""`propagator status` with several mappings: each under its name, --mapping narrows."""

from __future__ import annotations

from typing import Any

import pytest

from propagator.cli.status import render_status, select_mappings
from propagator.errors import ConfigurationError


def mapping(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "role": "leader", "catchup_done": True, "last_error": None, **extra}


PAYLOAD: dict[str, Any] = {
    "instance_id": "host-1",
    "version": "1.0",
    "role": "mixed",
    "catchup_done": False,
    "last_error": None,
    "mappings": [mapping("jobs"), mapping("orders", role="standby", last_error="boom")],
}


def test_several_mappings_each_under_its_name() -> None:
    text = render_status("http://h", PAYLOAD, (False, ["mapping orders: sandbox not connected"]))
    assert "NOT READY: mapping orders: sandbox not connected" in text
    assert "  role:         mixed" in text
    assert "  mapping jobs:" in text
    assert "  mapping orders:" in text
    assert "    last error:   boom" in text
    # The first mapping's fields are not repeated at the top.
    assert text.count("last error") == 2


def test_one_mapping_is_shown_once_at_the_top() -> None:
    text = render_status("http://h", select_mappings(PAYLOAD, ["orders"]), None)
    assert "mapping orders" not in text
    assert "  role:         standby" in text
    assert "  last error:   boom" in text


def test_an_unknown_mapping_is_one_line() -> None:
    with pytest.raises(
        ConfigurationError, match="serves no mapping 'nope'; it serves: jobs, orders"
    ):
        select_mappings(PAYLOAD, ["nope"])
