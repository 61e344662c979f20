"""The exit code of a command over several mappings: the most severe of theirs."""

from __future__ import annotations

import pytest

from propagator.cli.per_mapping import heading, worst
from propagator.errors import ExitCode


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([], ExitCode.OK),
        ([0, 0], ExitCode.OK),
        ([0, 1, 0], ExitCode.DIFFERENCES_FOUND),
        ([1, 4], ExitCode.ROWS_FAILED),
        ([4, 3, 1], ExitCode.DATABASE_UNAVAILABLE),
        ([3, 2, 4, 1], ExitCode.USAGE),
        ([2, 130], ExitCode.INTERRUPTED),
    ],
)
def test_worst_ranks_settings_over_databases_over_rows_over_differences(
    codes: list[int], expected: int
) -> None:
    assert worst(codes) == expected


def test_heading() -> None:
    assert heading("mapping jobs_qa") == "== mapping jobs_qa =="
