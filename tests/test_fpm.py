"""Tests of the fpM mask reader: span decoding, rasterisation, validation and the real frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from processccd.errors import InputError
from processccd.sdss.fpm import decode_spans, paint_spans, rasterize_spans, read_fpm_spans
from reference_impl.fpm import read_fpm

PLANE_NAMES = [
    "INTERP", "SATUR", "NOTCHECKED", "OBJECT", "BRIGHTOBJECT",
    "BINOBJECT", "CATOBJECT", "SUBTRACTED", "GHOST", "CR",
]  # fmt: skip


def pack(spans: list[tuple[int, int, int]]) -> bytes:
    return np.asarray(spans, dtype=">i2").reshape(-1).tobytes()


def plane_hdu(objects: list[list[tuple[int, int, int]]], row0: int = 0, col0: int = 0) -> fits.BinTableHDU:
    """A plane table with one row per object mask (list of spans)."""
    blobs = [np.frombuffer(pack(spans), dtype=np.uint8) for spans in objects]
    n = len(objects)
    columns = [fits.Column(name="refcntr", format="J", array=np.ones(n, dtype=np.int32))]
    columns.append(fits.Column(name="nspan", format="J", array=np.array([len(o) for o in objects], np.int32)))
    columns.append(fits.Column(name="row0", format="J", array=np.full(n, row0, np.int32)))
    columns.append(fits.Column(name="col0", format="J", array=np.full(n, col0, np.int32)))
    columns.append(fits.Column(name="s", format="PB()", array=np.array(blobs, dtype=object)))
    return fits.BinTableHDU.from_columns(columns)


def write_fpm(path: Path, planes: dict[str, fits.BinTableHDU], shape: tuple[int, int] = (20, 30)) -> Path:
    """An fpM-like file: every plane of PLANE_NAMES (empty unless given) and the name table."""
    primary = fits.PrimaryHDU()
    primary.header["MASKROWS"] = shape[0]
    primary.header["MASKCOLS"] = shape[1]
    primary.header["NPLANE"] = len(PLANE_NAMES)
    hdus = [primary] + [planes.get(name, plane_hdu([])) for name in PLANE_NAMES]
    names = [f"S_MASK_{name}" for name in PLANE_NAMES] + ["S_NMASK_TYPES"]
    hdus.append(
        fits.BinTableHDU.from_columns(
            [
                fits.Column(name="defName", format="31A", array=["S_MASKTYPE"] * len(names)),
                fits.Column(name="attributeName", format="31A", array=names),
                fits.Column(name="Value", format="J", array=np.arange(len(names), dtype=np.int32)),
            ]
        )
    )
    fits.HDUList(hdus).writeto(path)
    return path


def test_decode_spans_big_endian_signed() -> None:
    raw = pack([(3, -1, 5), (1488, 2040, 2047)])
    assert decode_spans(raw).tolist() == [[3, -1, 5], [1488, 2040, 2047]]
    assert decode_spans(b"").shape == (0, 3)
    with pytest.raises(ValueError):
        decode_spans(b"\x00" * 5)


def test_rasterize_clips_x_and_drops_rows_outside() -> None:
    spans = np.array([[0, -1, 1], [2, 27, 40], [-1, 0, 29], [20, 0, 29], [5, 10, 10], [6, 12, 11], [7, 3, 4]])
    plane = rasterize_spans(spans, (20, 30))
    expected = np.zeros((20, 30), dtype=bool)
    expected[0, 0:2] = True
    expected[2, 27:30] = True
    expected[5, 10] = True
    expected[7, 3:5] = True
    np.testing.assert_array_equal(plane, expected)


def test_rasterize_overlapping_spans_stay_boolean() -> None:
    plane = rasterize_spans(np.array([[1, 0, 5], [1, 3, 8], [1, 3, 8]]), (3, 10))
    assert plane[1].tolist() == [True] * 9 + [False]
    assert plane.sum() == 9


def test_rasterize_dense_spans_equal_the_sparse_painting() -> None:
    """Spans covering more than a quarter of the mask take the running-sum path; both paths agree."""
    rng = np.random.default_rng(7)
    y = rng.integers(-3, 43, 400)
    x1 = rng.integers(-5, 60, 400)
    spans = np.column_stack([y, x1, x1 + rng.integers(-2, 30, 400)])
    dense = rasterize_spans(spans, (40, 50))
    expected = np.zeros((40, 50), dtype=bool)
    for row, first, last in spans.tolist():
        if 0 <= row < 40 and max(first, 0) <= min(last, 49):
            expected[row, max(first, 0) : min(last, 49) + 1] = True
    np.testing.assert_array_equal(dense, expected)
    sparse = [rasterize_spans(spans[i : i + 10], (40, 50)) for i in range(0, 400, 10)]
    np.testing.assert_array_equal(np.logical_or.reduce(sparse), expected)


@pytest.mark.parametrize("n_spans", [10, 400])  # sparse, and dense (the running-sum path)
def test_paint_spans_ors_the_rasterized_planes_into_the_first_rows(n_spans: int) -> None:
    rng = np.random.default_rng(8)
    frame = (40, 50)
    mask = rng.integers(0, 2**16, (31, 50)).astype(np.uint16)  # fewer rows than the frame, as a trimmed mask
    expected = mask.copy()
    for bit in (1, 1 << 9, 1 << 15):
        y = rng.integers(-3, 43, n_spans)
        x1 = rng.integers(-5, 60, n_spans)
        spans = np.column_stack([y, x1, x1 + rng.integers(-2, 30, n_spans)])
        np.bitwise_or(expected, np.uint16(bit), out=expected, where=rasterize_spans(spans, frame)[:31])
        paint_spans(mask, spans, bit)
        np.testing.assert_array_equal(mask, expected)
    with pytest.raises(ValueError, match="C-contiguous"):
        paint_spans(mask[:, ::2], np.zeros((0, 3), dtype=np.int64), 1)


def test_read_fpm_synthetic(tmp_path: Path) -> None:
    planes = {
        "INTERP": plane_hdu([[(0, 0, 0), (1, 0, 0)], [(4, 2, 6)]]),
        "SATUR": plane_hdu([[(3, 5, 7)]], row0=1, col0=2),
        "CR": plane_hdu([[(19, 28, 31), (25, 0, 29)]]),
    }
    masks = read_fpm(write_fpm(tmp_path / "fpM.fit", planes))
    assert sorted(masks) == sorted(PLANE_NAMES)
    assert all(m.shape == (20, 30) and m.dtype == bool for m in masks.values())
    assert np.argwhere(masks["INTERP"]).tolist() == [[0, 0], [1, 0], [4, 2], [4, 3], [4, 4], [4, 5], [4, 6]]
    assert np.argwhere(masks["SATUR"]).tolist() == [[2, 3], [2, 4], [2, 5]]
    assert np.argwhere(masks["CR"]).tolist() == [[19, 28], [19, 29]]
    assert masks["GHOST"].sum() == 0
    only = read_fpm(tmp_path / "fpM.fit", planes=["CR"])
    assert list(only) == ["CR"]
    spans = read_fpm_spans(tmp_path / "fpM.fit")
    assert spans.shape == (20, 30) and sorted(spans.spans) == sorted(PLANE_NAMES)
    assert spans.spans["SATUR"].tolist() == [[2, 3, 5]]  # row0, col0 applied
    np.testing.assert_array_equal(rasterize_spans(spans.spans["INTERP"], spans.shape), masks["INTERP"])


def test_read_fpm_plane_found_by_name_not_position(tmp_path: Path) -> None:
    path = write_fpm(tmp_path / "fpM.fit", {"SATUR": plane_hdu([[(1, 1, 1)]])})
    with fits.open(path, mode="update") as hdul:  # swap INTERP (0) and SATUR (1) in the name table
        hdul[-1].data["Value"][:2] = [1, 0]
    masks = read_fpm(path)
    assert masks["INTERP"].sum() == 1 and masks["SATUR"].sum() == 0


@pytest.mark.parametrize("spans, nspan, nbytes", [([], 1, 0), ([(1, 1, 1)], 2, 6), ([(1, 1, 1)], 0, 6)])
def test_read_fpm_span_length_checked(
    tmp_path: Path, spans: list[tuple[int, int, int]], nspan: int, nbytes: int
) -> None:
    hdu = plane_hdu([spans])
    hdu.data["nspan"][0] = nspan
    path = write_fpm(tmp_path / "fpM.fit", {"CR": hdu})
    with pytest.raises(InputError, match=f"span data of {nbytes} bytes, expected 6 x {nspan} spans") as info:
        read_fpm(path)
    assert str(path) in str(info.value)


def test_read_fpm_truncated_file(tmp_path: Path) -> None:
    path = write_fpm(tmp_path / "fpM.fit", {"INTERP": plane_hdu([[(y, 0, 29) for y in range(20)]] * 50)})
    truncated = tmp_path / "truncated.fit"
    truncated.write_bytes(path.read_bytes()[: 2880 * 3 + 100])
    with pytest.raises(InputError, match=r"truncated\.fit: cannot read fpM file \(truncated"):
        read_fpm(truncated)


def test_read_fpm_negative_nspan(tmp_path: Path) -> None:
    hdu = plane_hdu([[]])
    hdu.data["nspan"][0] = -1
    with pytest.raises(InputError, match="negative nspan"):
        read_fpm(write_fpm(tmp_path / "fpM.fit", {"CR": hdu}))


def test_read_fpm_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_fpm(tmp_path / "missing.fit")
    path = write_fpm(tmp_path / "fpM.fit", {}, shape=(0, 30))
    with pytest.raises(InputError, match="invalid mask size"):
        read_fpm(path)
    path = write_fpm(tmp_path / "fpM2.fit", {})
    with fits.open(path) as hdul:
        del hdul[6:11]  # keep the primary, INTERP..BRIGHTOBJECT and the name table
        hdul.writeto(tmp_path / "fpM3.fit")
    with pytest.raises(InputError, match="HDU 6 of mask plane"):
        read_fpm(tmp_path / "fpM3.fit")
    with pytest.raises(InputError, match="not in the plane name table"):
        read_fpm(path, planes=["NOPE"])
    fits.HDUList([fits.PrimaryHDU()]).writeto(tmp_path / "empty.fit")
    with pytest.raises(InputError, match="MASKROWS"):
        read_fpm(tmp_path / "empty.fit")


# trimmed-frame (rows < 1361) pixel counts INTERP / SATUR / CR, sdss-inputs.md §2
EXPECTED_COUNTS = {
    ("4192", "u"): (16986, 0, 665), ("4192", "g"): (27353, 501, 1061), ("4192", "r"): (18733, 555, 522),
    ("4192", "i"): (16499, 1049, 516), ("4192", "z"): (7435, 116, 630),
    ("6377", "u"): (16887, 35, 562), ("6377", "g"): (27497, 559, 1093), ("6377", "r"): (18950, 774, 503),
    ("6377", "i"): (16770, 1365, 518), ("6377", "z"): (7311, 29, 477),
}  # fmt: skip
FIELDS = {"4192": "0300", "6377": "0399"}


@pytest.mark.slow
@pytest.mark.parametrize("run, band", sorted(EXPECTED_COUNTS))
def test_real_fpm_counts(demo_dir: Path, run: str, band: str) -> None:
    path = demo_dir / f"input/{run}/40/objcs/4/fpM-00{run}-{band}4-{FIELDS[run]}.fit"
    masks = read_fpm(path)
    assert sorted(masks) == sorted(PLANE_NAMES)
    assert all(m.shape == (1489, 2048) and m.dtype == bool for m in masks.values())
    counts = tuple(int(masks[name][:1361].sum()) for name in ("INTERP", "SATUR", "CR"))
    assert counts == EXPECTED_COUNTS[(run, band)]
    assert not np.any(masks["CR"] & ~masks["INTERP"])  # every CR pixel is also interpolated
    assert masks["INTERP"][:, 0].all()  # column 0 is a bad column in every filter
    notchecked = masks["NOTCHECKED"]
    assert notchecked[:4].all() and notchecked[1485:].all()  # frame border rows
