"""Which unique index proves key columns unique, and the line that refuses them when not."""

from __future__ import annotations

from propagator.core.uniqueness import KeyProof, UniqueIndex, covering_index, non_unique_message


def test_a_primary_key_is_preferred_over_other_covering_indexes() -> None:
    """Of several indexes within the key columns, the primary key is the one named."""
    indexes = [
        UniqueIndex("jobs_job_release_idx", ("job", "release")),
        UniqueIndex("jobs_pkey", ("job", "release"), "p"),
        UniqueIndex("jobs_job_release_key", ("release", "job"), "u"),
    ]
    chosen = covering_index(("job", "release"), indexes)
    assert chosen is not None
    assert chosen.describe() == "primary key jobs_pkey"


def test_an_index_on_a_subset_of_the_key_columns_proves_them_unique() -> None:
    """A unique index on job alone proves (job, release) unique; one on more columns does not."""
    assert covering_index(("job", "release"), [UniqueIndex("jobs_job_idx", ("job",))]) is not None
    wider = [UniqueIndex("jobs_job_release_key", ("job", "release"), "u")]
    assert covering_index(("job",), wider) is None
    assert covering_index(("stage", "release"), wider) is None


def test_a_nullable_key_column_is_said_with_the_proof() -> None:
    """A proof names the side and index, and says NULLs never collide when a column is nullable."""
    assert KeyProof("sandbox", "primary key jobs_pkey").describe() == (
        "sandbox: primary key jobs_pkey"
    )
    nullable = KeyProof("production", "unique index jobs_job_idx", ("job",)).describe()
    assert nullable.startswith("production: unique index jobs_job_idx, job nullable: ")
    assert "NULLs never collide" in nullable


def test_the_refusal_names_table_columns_duplicate_and_fix() -> None:
    """The refusal is one line: where, the key columns, one duplicate (seed format) and the fix."""
    line = non_unique_message("the production table public.jobs", ("job",), (100000,))
    assert line == (
        "key columns (job) are not unique in the production table public.jobs: duplicate key "
        "100000; add a unique index on (job) or choose key columns that identify one row"
    )
    assert "\n" not in line
    pair = non_unique_message("the sandbox rows", ("stage", "release"), ("cut", "A"))
    assert "duplicate key cut-A" in pair
    assert "unique index on (stage, release)" in pair
