"""Answer extraction: numbers in all their spellings, choices, JSON fields, regexes, free text."""

from __future__ import annotations

import pytest

from expertgraph.core.types import AnswerFormat
from expertgraph.policies.aggregation.answers import (
    Extracted,
    extract_answer,
    extract_number,
    find_boxed,
    find_json_field,
    format_number,
    normalize_text,
    numbers_equal,
)

NUMBER = AnswerFormat(kind="number")
CHOICE = AnswerFormat(kind="choice")
TEXT = AnswerFormat(kind="text")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The total is $1,000.50.", "1000.5"),
        ("She needs 20 cups", "20"),
        ("€ 3,250 in all", "3250"),
        ("It rose by 45%", "45"),
        ("about 12 percent", "12"),
        ("x = 3/4", "0.75"),
        ("It takes 1 1/2 hours", "1.5"),
        ("so 3 * 6 = 18 apples", "18"),
        ("The temperature fell to -7 degrees", "-7"),
        ("\u22127 degrees", "-7"),
        ("between 3-4 units, so 4", "4"),
        ("18.00", "18"),
        (".5", "0.5"),
        ("Total: 1,234,567", "1234567"),
    ],
)
def test_numbers_in_every_spelling(text: str, expected: str) -> None:
    found = extract_answer(text, NUMBER)
    assert found.answer == expected, found


@pytest.mark.parametrize(
    ("text", "expected", "source"),
    [
        ("We get 5, so \\boxed{42}.", "42", "boxed"),
        ("$\\boxed{\\frac{3}{4}}$", "0.75", "boxed"),
        ("\\boxed{\\dfrac{-1}{2}}", "-0.5", "boxed"),
        ("\\boxed{12\\text{ cm}}", "12", "boxed"),
        ("\\boxed{\\$1{,}200}", "1200", "boxed"),
        ('{"reasoning": "2 + 3 = 5 then 9", "answer": "$70,000"}', "70000", "json:answer"),
        ('```json\n{"reasoning": "a\nb 7", "answer": 18}\n```', "18", "json:answer"),
        ("Work: 4 + 4 = 8\nFinal answer: 8 apples", "8", "marker"),
        ("The answer is 12. Check: 12 * 2 = 24", "12", "marker"),
        ("Natalia sold 48 clips...\n#### 72", "72", "marker"),
        ("The answer is five.", "5", "marker"),
    ],
)
def test_where_the_answer_is_stated_wins_over_other_numbers(
    text: str, expected: str, source: str
) -> None:
    found = extract_answer(text, NUMBER)
    assert (found.answer, found.source) == (expected, source)


def test_declared_answer_field_beats_boxed_and_an_empty_field_declines() -> None:
    fmt = AnswerFormat(kind="number", json_field="answer")
    text = '{"reasoning": "first guess \\\\boxed{3}", "answer": "4 * 15 * 12 = 720"}'
    assert extract_answer(text, fmt).answer == "720"
    declined = extract_answer(
        '{"reasoning": "we have 20 eggs", "answer": "Cannot be determined"}', fmt
    )
    assert declined.answer is None
    assert "holds no answer" in declined.reason
    # Without the field the whole reply is read.
    assert extract_answer("so there are 20 eggs", fmt).answer == "20"


def test_unparseable_answers_say_why() -> None:
    for text, fragment in [("", "empty"), ("   ", "empty"), ("no digits here", "no number")]:
        found = extract_answer(text, NUMBER)
        assert found.answer is None and not found.ok
        assert fragment in found.reason
    assert extract_answer("I think so", CHOICE).reason == "no choice letter in the text"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("(C)", "C"),
        ("I think the answer is D.", "D"),
        ("A) is wrong, B) is wrong. Answer: C", "C"),
        ('{"answer": "E"}', "E"),
        ("\\boxed{F}", "F"),
        ("D. Because of the heat", "D"),
    ],
)
def test_choice_letters(text: str, expected: str) -> None:
    assert extract_answer(text, CHOICE).answer == expected


def test_choice_does_not_mistake_words_for_letters() -> None:
    assert extract_answer("I am not sure, a bit of both", CHOICE).answer is None
    named = extract_answer(
        "It must be Venus.", AnswerFormat(kind="choice", choices=["Mars", "Venus"])
    )
    assert named.answer == "Venus"
    both = extract_answer("Mars or Venus", AnswerFormat(kind="choice", choices=["Mars", "Venus"]))
    assert both.answer is None and "several" in both.reason


def test_json_field_and_whole_object() -> None:
    fmt = AnswerFormat(kind="json", json_field="city")
    assert extract_answer('Sure! {"city": "Paris", "country": "France"}', fmt).answer == "Paris"
    assert extract_answer('{"city": {"name": "Lima"}}', fmt).answer == '{"name": "Lima"}'
    assert "no field" in (extract_answer('{"town": "Rome"}', fmt).reason or "")
    whole = extract_answer('x {"b": 1, "a": 2} y', AnswerFormat(kind="json"))
    assert whole.answer == '{"a": 2, "b": 1}'
    # Broken JSON still yields the field through the key pattern.
    assert find_json_field('{"answer": "12", "note": "unterminated', "answer") == "12"


def test_regex_group_then_kind() -> None:
    fmt = AnswerFormat(kind="number", regex=r"RESULT=(.*)")
    assert extract_answer("noise 99 RESULT=1,500 units", fmt).answer == "1500"
    missing = extract_answer("nothing", fmt)
    assert missing.answer is None and "regex" in missing.reason


def test_free_text_is_normalised() -> None:
    assert extract_answer("  Paris. ", TEXT).answer == "paris"
    assert extract_answer("The answer is  PARIS!", TEXT).answer == "paris"
    assert extract_answer('{"answer": "Tokyo"}', TEXT).answer == "tokyo"
    assert extract_answer("...", TEXT).answer is None
    assert normalize_text("\uff30aris") == "paris"  # full-width letters fold


def test_helpers() -> None:
    assert format_number(__import__("fractions").Fraction(1, 3)) == "0.333333"
    assert numbers_equal("18", "18.0000001")
    assert not numbers_equal("18", "19")
    assert not numbers_equal(None, "1")
    assert find_boxed("a \\boxed{x^{2}} b") == "x^{2}"
    assert find_boxed("no box") is None
    assert extract_number("1 then 2 then 3").answer == "3"
    assert Extracted("1").ok and not Extracted(None, "x").ok
