"""Hostile input to the FHIR search parser and the imaging-category validators, property-tested: any
query string either parses or is refused with the module's own error, never anything else; date ranges
are well ordered; category values that pass are exactly the DICOM code strings."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from node.fhir.search import KNOWN, MAX_COUNT, SearchError, parse_search
from node.vocabulary import CategoryError, code_string, study_date

names = st.one_of(st.sampled_from(sorted(KNOWN)), st.text(max_size=20))
values = st.one_of(st.text(max_size=300), st.from_regex(r"(ge|le|gt|lt|eq)?\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}:\d{2}Z)?)?)?",
                                                         fullmatch=True))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(names, values), max_size=40))
def test_any_query_parses_or_is_refused_cleanly(items):
    try:
        s = parse_search(items)
    except SearchError as exc:
        assert str(exc)
        return
    assert 0 < s.count <= MAX_COUNT
    if s.flt.since is not None and s.flt.until is not None:
        assert s.flt.since >= 0 and s.flt.until >= 0


@given(st.from_regex(r"\d{4}-\d{2}-\d{2}", fullmatch=True))
def test_a_day_is_a_day(day):
    try:
        s = parse_search([("date", day)])
    except SearchError:
        return
    from datetime import UTC, datetime

    start = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)
    # the day, clipped to the epoch (no event is older than 1970)
    assert (s.flt.since, s.flt.until) == (max(start, 0), max(start + 86_400_000, 0))


@given(st.text(max_size=40))
def test_code_strings(value):
    try:
        v = code_string(value, "modality")
    except CategoryError:
        return
    assert re.fullmatch(r"[A-Z0-9_ ]{1,16}", v) and v.strip(" ") == v


@given(st.one_of(st.text(max_size=12), st.integers()))
def test_study_dates(value):
    try:
        n = study_date(value)
    except CategoryError:
        return
    assert 19000101 <= n <= 29991231
