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
