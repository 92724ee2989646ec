"""Strict/flexible number extraction and normalisation (isopo_bench.answers)."""

import pytest

from isopo_bench.answers import (
    extract_flexible,
    extract_strict,
    normalize_number,
    numbers_equal,
    score_flexible,
    score_strict,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", "42"), ("1,234", "1234"), ("$1,234.00", "1234"), ("  +7 ", "7"), ("-0", "0"), ("-0.0", "0"),
        ("18.50", "18.5"), ("007", "7"), ("-3", "-3"), ("\u22125", "-5"), ("- 5", "-5"), ("$ 3", "3"),
        ("1,2,3", None), ("12,34", None), ("abc", None), ("", None), ("1.2.3", None), ("\u0664\u0662", None),
        ("1e5", None), ("9" * 30_000, None),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the answer is\n#### 42", "42"),
        ("#### 1,234.00", "1234"),
        ("####$5", "5"),
        ("#### -3.", "-3"),
        ("#### 1\n#### 2", "2"),  # the last marker wins, as in verl
        ("#### x 5", None),
        ("the answer is 42", None),
        ("####", None),
        ("#### \u0664\u0662", None),  # non-ASCII digits never count
    ],
)
def test_extract_strict(text, expected):
    assert extract_strict(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("12+45=57\n57-7=50", "50"),
        ("57-7", "7"),  # a minus right after a digit is an operator, not a sign
        ("it is -7.", "-7"),
        ("=-2", "-2"),
        ("costs $1,200.", "1200"),
        ("1,2,3", "3"),
        ("no digits", None),
    ],
)
def test_extract_flexible(text, expected):
    assert extract_flexible(text) == expected


def test_only_the_tail_of_a_runaway_completion_is_read():
    assert extract_strict("#### 5" + "x" * 30_000) is None
    assert extract_strict("x" * 30_000 + "#### 5") == "5"


def test_equality_normalises_the_gold_answer_too():
    assert numbers_equal("1234", "1,234") == 1.0
    assert numbers_equal("5", "5.00") == 1.0
    assert numbers_equal(None, "5") == 0.0
    assert numbers_equal("5", "not a number") == 0.0
    assert score_strict("x\n#### 70", "70") == 1.0 and score_strict("70", "70") == 0.0
    assert score_flexible("70", "70") == 1.0 and score_flexible("7", "70") == 0.0
