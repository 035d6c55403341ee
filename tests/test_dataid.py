"""The id-expression parser: keys, value lists, validation."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processccd.dataid import DataId, expand_id_expression, parse_id_expression
from processccd.errors import DataIdError


def test_parse_and_expand_cartesian_product():
    values = parse_id_expression("run=4192 filter=u^g^r camcol=4 field=300^301")
    assert values == {"run": [4192], "filter": ["u", "g", "r"], "camcol": [4], "field": [300, 301]}
    ids = expand_id_expression(values)
    assert len(ids) == 6
    assert ids[0] == {"run": 4192, "rerun": None, "camcol": 4, "field": 300, "filter": "u"}


@pytest.mark.parametrize("expression, fragment", [
    ("run=4192 colour=u", "unknown data id key 'colour'"),
    ("run=4192 filter=x", "unknown filter 'x'"),
    ("run=abc", "run='abc'"),
    ("run=../..", "run='../..'"),
    ("field=1;rm", "field='1;rm'"),
    ("camcol=7", "camcol=7"),
    ("run=4192^", "malformed value list"),
    ("run", "malformed data id term"),
    ("run=1 run=2", "given twice"),
    ("", "empty data id"),
])
def test_malformed_ids_name_the_problem(expression, fragment):
    with pytest.raises(DataIdError, match=None) as info:
        parse_id_expression(expression)
    assert fragment in str(info.value)


@pytest.mark.parametrize("value", [
    "4192\u2003",  # em space after the number
    "0\x85",  # NEL: str.split() and int() treat it as whitespace
    "\u00a04192",  # no-break space before it
    "41\u200992",  # thin space inside it
    "\u0664\u0661\u0669\u0662",  # Arabic-Indic digits 4192 (int() accepts them)
    "\uff14\uff11\uff19\uff12",  # fullwidth digits
    "\U0001d7d2",  # mathematical bold digit 4
    "\u00b2",  # superscript two (str.isdigit() accepts it)
    "+4192", "-4192", "-0", "+0",
    "4_192", "4192_", "_4192",
    "0x10", "1e3", "4192.0",
])
@pytest.mark.parametrize("key", ["run", "rerun", "camcol", "field"])
def test_integer_values_are_ascii_decimal_digits_only(key, value):
    with pytest.raises(DataIdError) as info:
        parse_id_expression(f"{key}={value} filter=u")
    assert str(info.value) == f"{key}={value!r} in data id is not a non-negative integer"
    assert "\n" not in str(info.value)  # one line, the value escaped


@pytest.mark.parametrize("separator", ["\u2003", "\x85", "\u00a0", "\u3000"])
def test_terms_are_separated_by_ascii_whitespace_only(separator):
    with pytest.raises(DataIdError, match="not a non-negative integer"):
        parse_id_expression(f"run=4192{separator}filter=u")
    assert parse_id_expression("run=4192\tfilter=u\n camcol=4\r\n") == {"run": [4192], "filter": ["u"],
                                                                         "camcol": [4]}


def test_leading_zeros_and_nine_digits_are_plain_integers():
    assert parse_id_expression("run=004192 field=000000300 camcol=06") == {"run": [4192], "field": [300],
                                                                           "camcol": [6]}
    with pytest.raises(DataIdError, match="not a non-negative integer"):
        parse_id_expression("run=1000000000")


def test_exposure_id_follows_lsst_2013():
    assert DataId(run=4192, camcol=4, field=300, filter="u").exposure_id == 4192040300
    assert DataId(run=6377, camcol=4, field=399, filter="z").exposure_id == 6377440399


@given(st.text(max_size=40))
def test_parser_never_raises_anything_but_dataiderror(text):
    try:
        values = parse_id_expression(text)
    except DataIdError:
        return
    for key, vals in values.items():
        for v in vals:
            assert (v in "ugriz") if key == "filter" else (isinstance(v, int) and v >= 0)
