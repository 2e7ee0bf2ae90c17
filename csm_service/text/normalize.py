"""Written text -> what a phone voice should say, before tokenising (US English).

CSM reads characters: "$12.50", "3:30pm" or "555-123-4567" come out mangled or skipped. This turns
the things phone calls are full of into words: currency, percentages, times, dates, phone numbers,
ordinals, plain and decimal numbers, long digit strings (read digit by digit), and common
abbreviations. Number words come from num2words; the patterns are ours. Text without any of these
is returned unchanged.
"""

from __future__ import annotations

import re

from num2words import num2words

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
DIGITS = "zero one two three four five six seven eight nine".split()
CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents")}
CURRENCIES["£"] = ("pound", "pounds", "penny", "pence")
ABBREVIATIONS = {
    "Dr.": "Doctor",
    "Mr.": "Mister",
    "Mrs.": "Missus",
    "Ms.": "Miz",
    "Jr.": "Junior",
    "Sr.": "Senior",
    "St.": "Street",
    "Ave.": "Avenue",
    "Blvd.": "Boulevard",
    "Rd.": "Road",
    "Apt.": "Apartment",
    "Ste.": "Suite",
    "Inc.": "Incorporated",
    "Ltd.": "Limited",
    "Co.": "Company",
    "Corp.": "Corporation",
    "Dept.": "Department",
    "approx.": "approximately",
    "etc.": "et cetera",
    "vs.": "versus",
    "e.g.": "for example",
    "i.e.": "that is",
    "a.m.": "A M",
    "p.m.": "P M",
    "No.": "number",
    "Mon.": "Monday",
    "Tue.": "Tuesday",
    "Wed.": "Wednesday",
    "Thu.": "Thursday",
    "Fri.": "Friday",
    "Sat.": "Saturday",
    "Sun.": "Sunday",
}
SYMBOLS = {"&": " and ", "@": " at ", "+": " plus ", "=": " equals "}


MAX_CARDINAL = 10**15  # beyond this a number is read digit by digit


def cardinal(value: int) -> str:
    """American style: no "and", no commas ("one thousand two hundred five")."""
    if value >= MAX_CARDINAL:
        return digits(str(value))
    words = num2words(value)
    return re.sub(r",| and\b", "", words).replace("  ", " ")


def digits(text: str) -> str:
    return " ".join(DIGITS[int(c)] for c in text if c.isdigit())


def number_words(raw: str) -> str:
    """ "1,234" -> one thousand two hundred thirty-four; "3.14" -> three point one four;
    "0042" or 7+ digits without commas -> digit by digit."""
    plain = raw.replace(",", "")
    if "." in plain:
        whole, _, frac = plain.partition(".")
        return f"{cardinal(int(whole or 0))} point {digits(frac)}"
    if (len(plain) > 1 and plain.startswith("0")) or (len(plain) >= 7 and "," not in raw):
        return digits(plain)  # codes, account and order numbers: digit by digit
    return cardinal(int(plain))


def _number(match: re.Match) -> str:
    return number_words(match.group(0))


def _currency(match: re.Match) -> str:
    one, many, sub_one, sub_many = CURRENCIES[match.group("symbol")]
    whole = int(match.group("whole").replace(",", ""))
    scale = match.group("scale")
    if scale:
        return f"{cardinal(whole)} {scale.lower()} {many}"
    cents = int((match.group("cents") or "0").ljust(2, "0")[:2])
    words = f"{cardinal(whole)} {one if whole == 1 else many}"
    if cents:
        words += f" and {cardinal(cents)} {sub_one if cents == 1 else sub_many}"
    return words


def _time(match: re.Match) -> str:
    hour, minute = int(match.group("hour")), match.group("minute")
    suffix = (match.group("suffix") or "").replace(".", "").lower()
    if hour > 23 or (minute is not None and int(minute) > 59):
        return match.group(0)
    if minute is None or minute == "00":
        spoken = cardinal(hour) + ("" if suffix else " o'clock")
    elif minute.startswith("0"):
        spoken = f"{cardinal(hour)} oh {cardinal(int(minute))}"
    else:
        spoken = f"{cardinal(hour)} {cardinal(int(minute))}"
    return spoken + (f" {' '.join(suffix.upper())}" if suffix else "")


def _date(month: int, day: int, year: int | None) -> str:
    if not 1 <= month <= 12 or not 1 <= day <= 31:
        raise ValueError
    spoken = f"{MONTHS[month - 1]} {num2words(day, to='ordinal')}"
    return spoken + (f", {num2words(year, to='year')}" if year else "")


def _iso_date(match: re.Match) -> str:
    try:
        return _date(int(match.group("m")), int(match.group("d")), int(match.group("y")))
    except ValueError:
        return match.group(0)


def _us_date(match: re.Match) -> str:
    year = match.group("y")
    if year and len(year) == 2:
        year = "20" + year
    try:
        return _date(int(match.group("m")), int(match.group("d")), int(year) if year else None)
    except ValueError:
        return match.group(0)


def _month_day(match: re.Match) -> str:
    name = match.group("month").rstrip(".").lower()
    month = next((m for m in MONTHS if m.lower().startswith(name[:3])), None)
    day = int(match.group("day"))
    if month is None or not 1 <= day <= 31:
        return match.group(0)
    year = match.group("year")
    spoken = f"{month} {num2words(day, to='ordinal')}"
    return spoken + (f", {num2words(int(year), to='year')}" if year else "")


def _phone(match: re.Match) -> str:
    groups = [g for g in match.groups() if g]
    return ", ".join(digits(g) for g in groups)


def _year(match: re.Match) -> str:
    return f"{match.group(1)} {num2words(int(match.group(2)), to='year')}"


_MONTH_NAMES = "|".join(sorted({m for m in MONTHS} | {m[:3] for m in MONTHS} | {"Sept"}, key=len, reverse=True))
RULES: list[tuple[re.Pattern, object]] = [
    # Phone numbers: +1 (555) 123-4567, 555-123-4567, 555.123.4567; digits in groups.
    (
        re.compile(r"(?<![\w$])(?:\+?(1)[\s.-]?)?\(?(\d{3})\)?[\s.-](\d{3})[\s.-](\d{4})(?!\d)"),
        _phone,
    ),
    (re.compile(r"(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})\b"), _iso_date),
    (re.compile(r"\b(?P<m>\d{1,2})/(?P<d>\d{1,2})(?:/(?P<y>\d{4}|\d{2}))?\b"), _us_date),
    (
        re.compile(rf"\b(?P<month>{_MONTH_NAMES})\.? (?P<day>\d{{1,2}})(?:st|nd|rd|th)?\b(?:,? (?P<year>\d{{4}}))?"),
        _month_day,
    ),
    (
        re.compile(
            r"(?P<symbol>[$€£])(?P<whole>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<cents>\d{1,2}))?"
            r"(?:\s?(?P<scale>million|billion|thousand|trillion)\b)?",
            re.IGNORECASE,
        ),
        _currency,
    ),
    (
        re.compile(r"\b(?P<hour>\d{1,2})(?::(?P<minute>\d{2}))?\s?(?P<suffix>[ap]\.?m\.?)(?![a-z])", re.IGNORECASE),
        _time,
    ),
    (re.compile(r"\b(?P<hour>\d{1,2}):(?P<minute>\d{2})(?P<suffix>)\b"), _time),
    (re.compile(r"(\d+(?:\.\d+)?)\s?%"), lambda m: f"{number_words(m.group(1))} percent"),
    (re.compile(r"\b(\d+)(?:st|nd|rd|th)\b"), lambda m: num2words(int(m.group(1)), to="ordinal")),
    (re.compile(r"\b(in|since|of|from|by|until|year) ((?:1[1-9]|20)\d{2})\b", re.IGNORECASE), _year),
    (re.compile(r"#\s?(?=\d)"), lambda m: "number "),
    (re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.])\d+(?:\.\d+)?(?![\w])"), _number),
]
_ABBREVIATION = re.compile("|".join(rf"(?<![\w.]){re.escape(k)}" for k in sorted(ABBREVIATIONS, key=len, reverse=True)))


def normalize(text: str) -> str:
    """What to say for ``text`` (unchanged when there is nothing to expand)."""
    if not any(c.isdigit() or c in "$€£%&@#+=." for c in text):
        return text
    text = _ABBREVIATION.sub(lambda m: ABBREVIATIONS[m.group(0)], text)
    for pattern, replace in RULES:
        text = pattern.sub(replace, text)  # type: ignore[arg-type]
    for symbol, words in SYMBOLS.items():
        text = text.replace(f" {symbol} ", words)
    return re.sub(r"[ \t]{2,}", " ", text).strip()
