"""Fuzzing: property tests of the id parser and the fpM span decoder, and a byte-mutation fuzz of the readers.

The byte-mutation fuzz (marked `fuzz` and `slow`; run with `pytest -m fuzz`) mutates the real demo files
with a fixed seed — random byte flips in header and data regions, truncations, insertions and header
values replaced by hostile ones — and requires every input to read or raise a ProcessCcdError, within a
per-input time limit.
"""

from __future__ import annotations

import gzip
import random
import signal
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import hypothesis_profile
from processccd.dataid import FILTERS, KEYS, parse_id_expression
from processccd.errors import DataIdError, ProcessCcdError
from processccd.sdss.astrans import read_astrans
from processccd.sdss.fpc import read_fpc
from processccd.sdss.fpm import decode_spans, rasterize_spans
from processccd.sdss.psfield import read_psfield, read_psfield_stats
from processccd.sdss.tsfield import read_tsfield
from reference_impl.fpm import read_fpm

# --- the Hypothesis profiles (tests/conftest.py) -------------------------------------------------------


@pytest.mark.parametrize("environ, profile", [
    ({}, "ci"),
    ({"CI": "true"}, "ci"),
    ({"CI": "1", "HYPOTHESIS_PROFILE": "fuzz"}, "ci"),  # never random examples under CI
    ({"CI": "false", "HYPOTHESIS_PROFILE": "fuzz"}, "fuzz"),
    ({"HYPOTHESIS_PROFILE": "fuzz"}, "fuzz"),
    ({"HYPOTHESIS_PROFILE": "ci"}, "ci"),
])
def test_hypothesis_profile_is_ci_unless_fuzz_is_asked_for_outside_ci(environ: dict[str, str], profile: str) -> None:
    assert hypothesis_profile(environ) == profile


def test_an_unknown_hypothesis_profile_is_refused() -> None:
    with pytest.raises(pytest.UsageError, match="HYPOTHESIS_PROFILE='random' is not one of ci, fuzz"):
        hypothesis_profile({"HYPOTHESIS_PROFILE": "random"})


def _examples(profile: str) -> list[str]:
    """The texts a property test draws under `profile`, in order."""
    seen: list[str] = []

    @settings(settings.get_profile(profile), max_examples=25)
    @given(st.text(max_size=12))
    def probe(text: str) -> None:
        seen.append(text)

    probe()
    return seen


def test_the_ci_profile_draws_the_same_examples_on_every_run() -> None:
    first = _examples("ci")
    assert len(set(first)) > 10 and _examples("ci") == first
    assert settings.get_profile("ci").database is None  # no replay of examples saved by an earlier run
    assert not settings.get_profile("fuzz").derandomize


# --- the id parser ------------------------------------------------------------------------------------

INTEGER_KEYS = tuple(k for k in KEYS if k != "filter")


@given(st.text(max_size=80))
def test_id_parser_accepts_or_raises_data_id_error(text: str) -> None:
    try:
        values = parse_id_expression(text)
    except DataIdError:
        return
    for key, items in values.items():
        assert key in KEYS and items
        for item in items:
            assert item in FILTERS if key == "filter" else isinstance(item, int) and item >= 0


@st.composite
def id_expressions(draw: st.DrawFn) -> tuple[str, dict[str, list[int | str]]]:
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, unique=True))
    values: dict[str, list[int | str]] = {}
    for key in keys:
        if key == "filter":
            values[key] = draw(st.lists(st.sampled_from(FILTERS), min_size=1, unique=True))
        else:
            high = 6 if key == "camcol" else 999_999_999
            values[key] = draw(st.lists(st.integers(1 if key == "camcol" else 0, high), min_size=1, unique=True))
    text = " ".join(f"{k}={'^'.join(str(v) for v in vs)}" for k, vs in values.items())
    return text, values


@given(id_expressions())
def test_id_parser_round_trip(case: tuple[str, dict[str, list[int | str]]]) -> None:
    text, values = case
    assert parse_id_expression(text) == values


ASCII_WHITESPACE = " \t\n\r\f\v"  # separates the terms of an id expression


@given(st.sampled_from(INTEGER_KEYS),
       st.text(min_size=1, max_size=12).filter(lambda s: "^" not in s and not set(s) & set(ASCII_WHITESPACE)))
def test_id_values_that_could_reach_a_path_are_rejected(key: str, value: str) -> None:
    """Only plain decimal integers pass: no '..', '/', ';', sign, Unicode digit or space can reach a file name."""
    try:
        parsed = parse_id_expression(f"{key}={value}")
    except DataIdError:
        return
    assert value.isascii() and value.isdigit()
    assert parsed == {key: [int(value)]}


# --- the fpM span decoder -----------------------------------------------------------------------------

spans_strategy = st.lists(st.tuples(st.integers(-40, 40), st.integers(-40, 40), st.integers(-40, 40)), max_size=30)


@given(spans_strategy, st.integers(1, 30), st.integers(1, 30))
def test_rasterize_matches_per_span_painting(spans: list[tuple[int, int, int]], nrow: int, ncol: int) -> None:
    expected = np.zeros((nrow, ncol), dtype=bool)
    for y, x1, x2 in spans:
        first, last = max(x1, 0), min(x2, ncol - 1)
        if 0 <= y < nrow and first <= last:
            expected[y, first : last + 1] = True
    assert np.array_equal(rasterize_spans(np.array(spans, dtype=np.int64).reshape(-1, 3), (nrow, ncol)), expected)


@given(st.lists(st.tuples(*[st.integers(-32768, 32767)] * 3), max_size=50))
def test_decode_spans_round_trip(spans: list[tuple[int, int, int]]) -> None:
    raw = np.array(spans, dtype=">i2").reshape(-1, 3).tobytes()
    assert decode_spans(raw).tolist() == [list(s) for s in spans]


@given(st.binary(max_size=200))
def test_decode_spans_any_bytes(raw: bytes) -> None:
    try:
        spans = decode_spans(raw)
    except ValueError:
        assert len(raw) % 6
        return
    assert spans.shape == (len(raw) // 6, 3)


# --- byte-mutation fuzz of the five readers -----------------------------------------------------------

SEED = 20130601
INPUTS_PER_READER = 600
SECONDS_PER_READER = 12.0  # time bound of each reader's share of the fuzz (5 readers: about 60 s)
SECONDS_PER_INPUT = 10  # a single input taking longer counts as a hang
HOSTILE_VALUES = [b"-1", b"0", b"999999999", b"2147483648", b"-2147483649", b"'abc'", b"T", b"1.5E999", b"NaN",
                  b"1000000000000000000000"]


class ReaderHangError(Exception):
    """A reader exceeded SECONDS_PER_INPUT."""


def _alarm(_signum: int, _frame: Any) -> None:
    raise ReaderHangError()


def _regions(path: Path) -> list[tuple[int, int, int]]:
    """(header start, data start, data end) of every HDU, in the uncompressed bytes."""
    with fits.open(path, memmap=False) as hdul:
        return [(info["hdrLoc"], info["datLoc"], info["datLoc"] + info["datSpan"])
                for info in (hdul.fileinfo(i) for i in range(len(hdul)))]


def mutate(raw: bytes, regions: list[tuple[int, int, int]], rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of `raw`: its kind and the mutated bytes."""
    data = bytearray(raw)
    header_start, data_start, data_end = rng.choice(regions)
    kind = rng.choice(["header flip", "data flip", "truncate", "insert", "header value"])
    if kind == "data flip" and data_end <= data_start:
        kind = "header flip"
    if kind == "header flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(header_start, data_start)] = rng.randrange(256)
    elif kind == "data flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(data_start, data_end)] = rng.randrange(256)
    elif kind == "truncate":
        del data[rng.randrange(len(data)) :]
    elif kind == "insert":
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 100))
    else:
        card = header_start + 80 * rng.randrange((data_start - header_start) // 80)
        value = rng.choice([*HOSTILE_VALUES, rng.randbytes(20)])
        data[card + 10 : card + 30] = value.rjust(20)
    return kind, bytes(data)


def _fuzz_targets(input_dir: Path) -> dict[str, tuple[Path, Callable[[Path], object]]]:
    run = input_dir / "4192" / "40"
    psfield = run / "objcs/4/psField-004192-4-0300.fit"
    return {
        "fpC": (run / "corr/4/fpC-004192-z4-0300.fit.gz", read_fpc),
        "fpM": (run / "objcs/4/fpM-004192-z4-0300.fit", read_fpm),
        "tsField": (run / "calibChunks/4/tsField-004192-4-40-0300.fit", read_tsfield),
        "psField": (psfield, lambda p: (read_psfield(p, "z"), read_psfield_stats(p, "z"))),
        "asTrans": (run / "astrom/asTrans-004192.fit", lambda p: read_astrans(p, 4, "z", 300)),
    }


@pytest.mark.fuzz
@pytest.mark.slow
def test_readers_survive_byte_mutations(demo_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    report: dict[str, Counter[str]] = {}
    unexpected: list[str] = []
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for name, (path, read) in _fuzz_targets(demo_dir / "input").items():
            original = path.read_bytes()
            compressed = original[:2] == b"\x1f\x8b"
            raw = gzip.decompress(original) if compressed else original
            regions = _regions(path)
            counts: Counter[str] = Counter()
            deadline = time.monotonic() + SECONDS_PER_READER
            for i in range(INPUTS_PER_READER):
                if time.monotonic() > deadline:
                    break
                kind, mutated = mutate(raw, regions, rng)
                if compressed and i % 4 == 0:  # a quarter as mutated gzip streams, the rest as plain FITS
                    kind, mutated = f"gzip {kind}", bytearray(original)
                    for _ in range(rng.randint(1, 4)):
                        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
                    mutated = bytes(mutated)
                target = tmp_path / f"{name}-{i}.fit"
                target.write_bytes(mutated)
                counts["tried"] += 1
                signal.alarm(SECONDS_PER_INPUT)
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        read(target)
                    counts["read"] += 1
                except ProcessCcdError:
                    counts["ProcessCcdError"] += 1
                except ReaderHangError:
                    counts["hang"] += 1
                    unexpected.append(f"{name} input {i} ({kind}): no result within {SECONDS_PER_INPUT} s")
                except Exception as exc:  # noqa: BLE001 - any other exception is the failure this test looks for
                    counts["other"] += 1
                    unexpected.append(f"{name} input {i} ({kind}): {type(exc).__name__}: {exc}")
                finally:
                    signal.alarm(0)
                target.unlink()
            report[name] = counts
    finally:
        signal.signal(signal.SIGALRM, previous)
    print(f"\nbyte-mutation fuzz (seed {SEED}):")
    for name, counts in report.items():
        print(f"  {name:8s} tried {counts['tried']:4d}  read {counts['read']:4d}  "
              f"ProcessCcdError {counts['ProcessCcdError']:4d}  hang {counts['hang']}  other {counts['other']}")
    assert not unexpected, "\n".join(unexpected[:20])
    assert all(counts["tried"] >= 100 for counts in report.values()), report
