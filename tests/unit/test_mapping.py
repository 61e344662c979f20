"""Field mappings, named transforms and the mapping spec's validation."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from propagator.core.mapping import FieldMapping, MappingSpec, format_key
from propagator.core.transforms import TRANSFORMS, NamedTransform, resolve_transform


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("float", Decimal("500.00"), 500.0),
        ("float", "2.5", 2.5),
        ("int", Decimal("7.9"), 7),
        ("int", " 12.0 ", 12),
        ("decimal", 0.1, Decimal("0.1")),
        ("decimal", Decimal("1.50"), Decimal("1.50")),
        ("text", 500, "500"),
        ("strip", "  red \n", "red"),
        ("upper", "red", "RED"),
        ("lower", "RED", "red"),
        ("blank_to_null", "   ", None),
        ("blank_to_null", "red", "red"),
        ("strip", 5, 5),
    ],
)
def test_named_transforms_convert(name: str, value: Any, expected: Any) -> None:
    """Each named transform, chosen by its configuration name, converts as documented."""
    mapping = FieldMapping("source", "target", name)
    assert isinstance(mapping.transform, NamedTransform)
    assert mapping.transform is TRANSFORMS[name]
    result = mapping.apply(value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_named_transforms_keep_null(name: str) -> None:
    """Every named transform maps NULL to NULL."""
    assert FieldMapping("a", "a", name).apply(None) is None


def test_unknown_transform_lists_the_valid_names() -> None:
    """An unknown transform name is refused with the list of valid names."""
    with pytest.raises(ValueError, match="unknown transform 'money'") as caught:
        FieldMapping("a", "b", "money")
    for name in TRANSFORMS:
        assert name in str(caught.value)
    with pytest.raises(ValueError, match="valid: blank_to_null, decimal, float"):
        resolve_transform("Float")


@pytest.mark.parametrize("function", [float, int, str, Decimal])
def test_callables_are_not_called_on_null(function: Any) -> None:
    """A plain callable such as float or int is never asked to convert NULL."""
    mapping = FieldMapping("fab_order", "fab_order", transform=function)
    assert mapping.apply(None) is None
    assert mapping.apply("5") == function("5")


def test_a_callable_sees_every_non_null_value() -> None:
    """A user callable is applied to each non-NULL value, even falsy ones."""
    seen: list[Any] = []

    def record(value: Any) -> Any:
        seen.append(value)
        return value

    mapping = FieldMapping("a", "a", record)
    for value in (None, 0, "", False, None):
        mapping.apply(value)
    assert seen == [0, "", False]


def test_no_transform_passes_values_through() -> None:
    """Without a transform the production value is the sandbox value."""
    value = Decimal("500.00")
    assert FieldMapping("fab_order", "fab_order").apply(value) is value


@pytest.mark.parametrize(
    ("mapping", "description", "transform_name"),
    [
        (FieldMapping("fab_order", "fab_order"), "fab_order -> fab_order", None),
        (FieldMapping("a", "b", "float"), "a -> b (float)", "float"),
        (FieldMapping("a", "b", float), "a -> b (float)", "float"),
        (FieldMapping("a", "b", lambda v: v), "a -> b (<lambda>)", "<lambda>"),
    ],
)
def test_describe(mapping: FieldMapping, description: str, transform_name: str | None) -> None:
    """describe() shows source, target and the transform's name for people."""
    assert mapping.describe() == description
    assert mapping.transform_name == transform_name


def test_seed_constructor_shape_is_kept() -> None:
    """FieldMapping keeps the seed's positional (source, target) and transform keyword."""
    mapping = FieldMapping("fab_order", "fab_order", transform=float)
    assert (mapping.source, mapping.target, mapping.transform) == ("fab_order", "fab_order", float)


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("", "b", "source column must not be empty"),
        ("a", "", "target column must not be empty"),
        ("a" * 64, "b", "63-byte"),
        ("a", "é" * 32, "63-byte"),
        ("a\x00b", "b", "NUL"),
    ],
)
def test_field_mapping_refuses_bad_column_names(source: str, target: str, message: str) -> None:
    """Column names PostgreSQL cannot store (empty, too long, NUL) are refused at once."""
    with pytest.raises(ValueError, match=message):
        FieldMapping(source, target)


def test_field_mapping_is_frozen() -> None:
    """A mapping cannot be altered after it was validated."""
    mapping = FieldMapping("a", "b")
    with pytest.raises(AttributeError):
        mapping.target = "c"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("keys", "mappings", "message"),
    [
        ((), (FieldMapping("a", "a"),), "at least one key column"),
        (("job",), (), "at least one field mapping"),
        (("job", "job"), (FieldMapping("a", "a"),), "key columns must be distinct"),
        (("job",), (FieldMapping("a", "x"), FieldMapping("b", "x")), "same target column"),
        (("job", "release"), (FieldMapping("a", "release"),), r"key column.*\['release'\]"),
        (("",), (FieldMapping("a", "a"),), "key column must not be empty"),
    ],
)
def test_mapping_spec_validation(
    keys: tuple[str, ...], mappings: tuple[FieldMapping, ...], message: str
) -> None:
    """A spec needs keys, mappings, distinct keys and targets, and no key as a target."""
    with pytest.raises(ValueError, match=message):
        MappingSpec(keys, mappings)


def test_mapping_spec_columns() -> None:
    """Sources are read once each; watched columns are keys then sources, without repeats."""
    spec = MappingSpec.build(
        ["job", "release"],
        [
            FieldMapping("fab_order", "fab_order"),
            FieldMapping("fab_order", "fab_order_text", "text"),
            FieldMapping("job", "job_copy"),
        ],
    )
    assert spec.key_columns == ("job", "release")
    assert spec.source_columns == ("fab_order", "job")
    assert spec.target_columns == ("fab_order", "fab_order_text", "job_copy")
    assert spec.watched_columns == ("job", "release", "fab_order")


@pytest.mark.parametrize(
    ("key", "label"),
    [((10001, "A"), "10001-A"), ((7,), "7"), ((1, None, "x"), "1-NULL-x"), (("日本", 2), "日本-2")],
)
def test_format_key(key: tuple[Any, ...], label: str) -> None:
    """Keys print as the seed's dash-joined labels, NULL spelled out."""
    assert format_key(key) == label
