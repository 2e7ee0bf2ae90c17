"""Text normalisation: what phone calls are full of, spoken as words; plain text untouched."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from csm_service.text.normalize import normalize

CASES = [
    ("Hello, how are you today?", "Hello, how are you today?"),
    ("Thanks.", "Thanks."),
    ("Your balance is $1,234.56.", "Your balance is one thousand two hundred thirty-four dollars and fifty-six cents."),
    ("That's $1 or $5.01", "That's one dollar or five dollars and one cent"),
    ("It costs $2 million", "It costs two million dollars"),
    ("About €20 or £3.50", "About twenty euros or three pounds and fifty pence"),
    ("Call (555) 123-4567.", "Call five five five, one two three, four five six seven."),
    ("Or 555.987.6543", "Or five five five, nine eight seven, six five four three"),
    ("See you at 3:30pm", "See you at three thirty P M"),
    ("at 10:05 or 9 a.m.", "at ten oh five or nine A M"),
    ("Open at 12:00", "Open at twelve o'clock"),
    ("On 2026-11-21.", "On November twenty-first, twenty twenty-six."),
    ("Due 11/21/2026", "Due November twenty-first, twenty twenty-six"),
    ("By Nov 3rd, 2027", "By November third, twenty twenty-seven"),
    ("Dr. Smith, 42 Main St. Apt. 5", "Doctor Smith, forty-two Main Street Apartment five"),
    ("15% off", "fifteen percent off"),
    ("pi is 3.14", "pi is three point one four"),
    ("order 12345678, code 0042", "order one two three four five six seven eight, code zero zero four two"),
    ("since 1999 in 21st place", "since nineteen ninety-nine in twenty-first place"),
    ("ticket #5 & more", "ticket number five and more"),
    ("1,000,000 calls", "one million calls"),
]


@pytest.mark.parametrize(("text", "spoken"), CASES)
def test_normalize(text, spoken):
    assert normalize(text) == spoken


def test_impossible_dates_and_times_are_not_read_as_such():
    assert normalize("13/45") == "thirteen/forty-five"
    assert normalize("at 25:99") == "at twenty-five:ninety-nine"
    assert normalize("1,000,000,000,000,000,000,000") == "one " + " ".join(["zero"] * 21)  # too big: digits


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80) | st.from_regex(r"[$#]?[\d,.:/ -]{1,30}(am|%)?"))
def test_never_raises_and_never_empties_text(text):
    out = normalize(text)
    assert isinstance(out, str)
    if text.strip():
        assert out.strip()
