"""Tests of the tsField reader and the SDSS photometric zero point."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from processccd.errors import DataIdError, InputError
from processccd.sdss.tsfield import SDSS_EXPTIME, read_tsfield

GOOD_COLUMNS: dict[str, tuple[str, list[float]]] = {
    "gain": ("5E", [1.6, 3.995, 4.76, 4.885, 4.775]),
    "dark_variance": ("5E", [12.6, 1.96, 1.32, 6.25, 9.61]),
    "aa": ("5E", [-23.7, -24.4, -24.0, -23.7, -21.8]),
    "aaErr": ("5E", [0.002, 0.001, 0.001, 0.001, 0.002]),
    "kk": ("5E", [0.5, 0.15, 0.1, 0.05, 0.03]),
    "airmass": ("5D", [1.2, 1.25, 1.3, 1.35, 1.4]),
    "mjd": ("5D", [52931.1, 52931.2, 52931.3, 52931.4, 52931.5]),
    "saturation_level": ("5J", [60000, 50000, 43000, 23000, 62000]),
    "sky": ("5E", [1.5e-9, 2.2e-9, 4.7e-9, 7.9e-9, 2.3e-8]),
    "psf_width": ("5E", [1.4, 1.3, 1.2, 1.1, 1.2]),
    "neff_psf": ("5E", [29.0, 25.0, 20.0, 19.0, 21.0]),
}


def write_tsfield(path: Path, **overrides: list[float]) -> Path:
    primary = fits.PrimaryHDU()
    primary.header["RUN"] = 1234
    primary.header["CAMCOL"] = 3
    primary.header["FILTERS"] = "u g r i z"
    columns = [
        fits.Column(name="field", format="J", array=np.array([77])),
        fits.Column(name="quality", format="J", array=np.array([3])),
    ]
    for name, (form, values) in GOOD_COLUMNS.items():
        columns.append(fits.Column(name=name, format=form, array=np.array([overrides.get(name, values)])))
    fits.HDUList([primary, fits.BinTableHDU.from_columns(columns)]).writeto(path)
    return path


def test_synthetic_tsfield(tmp_path: Path) -> None:
    ts = read_tsfield(write_tsfield(tmp_path / "ts.fit"))
    assert (ts.run, ts.camcol, ts.field, ts.quality) == (1234, 3, 77, 3)
    np.testing.assert_allclose(ts.gain, GOOD_COLUMNS["gain"][1], rtol=1e-6)
    assert ts.saturation_level.tolist() == [60000, 50000, 43000, 23000, 62000]
    zp = -(-24.0 + 0.1 * 1.3) + 2.5 * math.log10(SDSS_EXPTIME)
    assert ts.zero_point("r") == pytest.approx(zp, abs=1e-6)
    assert ts.zero_point("r", exptime=1.0) == pytest.approx(24.0 - 0.13, abs=1e-6)
    assert ts.flux_mag0("r") == pytest.approx(10 ** (0.4 * ts.zero_point("r")), rel=1e-12)
    assert ts.flux_mag0("r") == pytest.approx(10 ** (0.4 * zp), rel=1e-5)
    assert ts.zero_point_err("u") == pytest.approx(0.002, abs=1e-8)
    with pytest.raises(DataIdError):
        ts.zero_point("y")


@pytest.mark.parametrize(
    "column, values, message",
    [
        ("gain", [1.6, 0.0, 4.76, 4.885, 4.775], r"gain\[g\] = 0.0 is not positive"),
        ("gain", [1.6, 3.9, float("nan"), 4.885, 4.775], r"gain\[r\] = nan"),
        ("aa", [-23.7, -24.4, -24.0, float("inf"), -21.8], r"aa\[i\]"),
        ("airmass", [1.2, 1.2, 1.2, 1.2, 0.5], r"airmass\[z\]"),
        ("aaErr", [-1.0, 0.001, 0.001, 0.001, 0.001], r"aaErr\[u\]"),
    ],
)
def test_invalid_values_rejected(tmp_path: Path, column: str, values: list[float], message: str) -> None:
    path = write_tsfield(tmp_path / "ts.fit", **{column: values})
    with pytest.raises(InputError, match=message) as info:
        read_tsfield(path)
    assert str(path) in str(info.value)


def test_only_the_requested_filter_must_be_valid(tmp_path: Path) -> None:
    path = write_tsfield(tmp_path / "ts.fit", gain=[1.6, 0.0, 4.76, 4.885, 4.775])
    assert read_tsfield(path, "u").gain[0] == pytest.approx(1.6)
    with pytest.raises(InputError, match=r"gain\[g\]"):
        read_tsfield(path, "g")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_tsfield(tmp_path / "missing.fit")
    fits.HDUList([fits.PrimaryHDU()]).writeto(tmp_path / "empty.fit")
    with pytest.raises(InputError, match="RUN"):
        read_tsfield(tmp_path / "empty.fit")
    path = write_tsfield(tmp_path / "ts.fit")
    (tmp_path / "truncated.fit").write_bytes(path.read_bytes()[:4000])
    with pytest.raises(InputError, match=r"truncated\.fit: cannot read tsField file \(truncated"):
        read_tsfield(tmp_path / "truncated.fit")
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["FILTERS"] = "g r i z u"
    with pytest.raises(InputError, match="FILTERS"):
        read_tsfield(path)


# exposure zero points (exptime 53.907456 s), sdss-inputs.md §3
EXPECTED_ZP = {
    "4192": {"u": 27.5075, "g": 28.6157, "r": 28.2449, "i": 28.0114, "z": 26.0778},
    "6377": {"u": 27.4518, "g": 28.5950, "r": 28.2276, "i": 28.0032, "z": 26.0765},
}
TSFIELDS = {"4192": "4192/40/calibChunks/4/tsField-004192-4-40-0300.fit",
            "6377": "6377/40/calibChunks/4/tsField-006377-4-40-0399.fit"}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(EXPECTED_ZP))
def test_real_zero_points(demo_dir: Path, run: str) -> None:
    ts = read_tsfield(demo_dir / "input" / TSFIELDS[run])
    assert (ts.run, ts.camcol, ts.field) == (int(run), 4, 300 if run == "4192" else 399)
    assert ts.quality == (3 if run == "4192" else 2)
    for band, zp in EXPECTED_ZP[run].items():
        assert ts.zero_point(band) == pytest.approx(zp, abs=0.001)
    np.testing.assert_allclose(ts.gain, [1.6, 3.995, 4.76, 4.885, 4.775], rtol=1e-6)
    assert ts.flux_mag0("u") == pytest.approx(1.0069e11 if run == "4192" else 9.5660e10, rel=1e-3)
    assert ts.zero_point_err("u") == pytest.approx(0.0016 if run == "4192" else 0.0364, abs=1e-4)
