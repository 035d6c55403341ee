"""Tests of the psField reader (KL PSF components and HDU 6 statistics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from processccd.errors import DataIdError, InputError
from processccd.sdss.psfield import read_psfield, read_psfield_stats

STATS = ("psf_width", "psf_sigma1_2G", "psf_sigma2_2G", "psf_b_2G", "gain", "dark_variance", "sky", "skysig")


def kl_hdu(c: np.ndarray, bases: list[np.ndarray], nrow_b: int = 3, ncol_b: int = 3) -> fits.BinTableHDU:
    """One filter's KL table: c (ncomp, 5, 5) and basis images (ncomp of them)."""
    n = len(bases)
    rrows = np.empty(n, dtype=object)  # one variable-length float32 array per row
    rrows[:] = [b.astype(np.float32).reshape(-1) for b in bases]
    return fits.BinTableHDU.from_columns(
        [
            fits.Column(name="nrow_b", format="J", array=np.full(n, nrow_b)),
            fits.Column(name="ncol_b", format="J", array=np.full(n, ncol_b)),
            fits.Column(name="c", format="25E", dim="(5,5)", array=np.asarray(c, dtype=np.float32)),
            fits.Column(name="RNROW", format="J", array=np.array([b.shape[0] for b in bases])),
            fits.Column(name="RNCOL", format="J", array=np.array([b.shape[1] for b in bases])),
            fits.Column(name="RROWS", format="PE()", array=rrows),
        ]
    )


def write_psfield(path: Path, hdus: dict[int, fits.BinTableHDU] | None = None, nfilter_hdus: int = 5) -> Path:
    """A psField-like file: KL tables for HDUs 1..nfilter_hdus (defaults below) and the HDU 6 statistics."""
    rng = np.random.default_rng(1)
    primary = fits.PrimaryHDU()
    primary.header["FILTERS"] = "u g r i z"
    hdu_list = [primary]
    for index in range(1, nfilter_hdus + 1):
        default = kl_hdu(rng.normal(size=(2, 5, 5)), [rng.normal(size=(51, 51)) for _ in range(2)])
        hdu_list.append((hdus or {}).get(index, default))
    if nfilter_hdus == 5:
        stats = [fits.Column(name=name, format="5E", array=np.array([np.arange(5) + 0.5 + k])) for k, name in
                 enumerate(STATS)]  # fmt: skip
        hdu_list.append(fits.BinTableHDU.from_columns(stats))
    fits.HDUList(hdu_list).writeto(path)
    return path


def test_coefficients_and_basis_orientation(tmp_path: Path) -> None:
    c = np.arange(2 * 25, dtype=np.float64).reshape(2, 5, 5)
    c[:, 3:, :] = 1e-44  # PHOTO leaves denormal garbage outside the [:nrow_b, :ncol_b] block
    bases = [np.arange(51 * 51, dtype=np.float64).reshape(51, 51) * (k + 1) for k in range(2)]
    path = write_psfield(tmp_path / "ps.fit", {3: kl_hdu(c, bases, nrow_b=3, ncol_b=2)})
    components = read_psfield(path, "r")
    assert len(components) == 2
    for k, component in enumerate(components):
        assert component.coeffs.shape == (3, 2)
        np.testing.assert_array_equal(component.coeffs, c[k, :3, :2])
        assert component.coeffs[1, 0] == 5 + 25 * k  # first index = power of row: flat c[5] = C[1, 0]
        assert component.basis.shape == (51, 51) and component.basis.dtype == np.float64
        assert component.basis[0, 1] == k + 1 and component.basis[1, 0] == 51 * (k + 1)  # RROWS row-major


def test_garbage_outside_the_block_is_ignored(tmp_path: Path) -> None:
    c = np.ones((1, 5, 5))
    c[0, 4, 4] = np.nan
    path = write_psfield(tmp_path / "ps.fit", {1: kl_hdu(c, [np.ones((51, 51))])})
    assert np.all(read_psfield(path, "u")[0].coeffs == 1.0)


@pytest.mark.parametrize(
    "c_value, basis, nrow_b, message",
    [
        (np.nan, np.ones((51, 51)), 3, "non-finite"),
        (1.0, np.full((51, 51), np.inf), 3, "non-finite"),
        (1.0, np.ones((51, 51)), 6, "polynomial size 6 x 3"),
        (1.0, np.ones((51, 51)), 0, "polynomial size 0 x 3"),
    ],
)
def test_bad_components(tmp_path: Path, c_value: float, basis: np.ndarray, nrow_b: int, message: str) -> None:
    hdu = kl_hdu(np.full((1, 5, 5), c_value), [basis], nrow_b=nrow_b)
    path = write_psfield(tmp_path / "ps.fit", {2: hdu})
    with pytest.raises(InputError, match=message) as info:
        read_psfield(path, "g")
    assert str(path) in str(info.value)
    read_psfield(path, "u")  # the other filters are still readable


def test_basis_size_mismatch(tmp_path: Path) -> None:
    hdu = kl_hdu(np.ones((1, 5, 5)), [np.ones((51, 51))])
    hdu.data["RNCOL"][0] = 50
    path = write_psfield(tmp_path / "ps.fit", {4: hdu})
    with pytest.raises(InputError, match="basis of 2601 pixels, expected 51 x 50"):
        read_psfield(path, "i")


def test_missing_hdus_and_files(tmp_path: Path) -> None:
    path = write_psfield(tmp_path / "ps.fit", nfilter_hdus=3)
    assert len(read_psfield(path, "r")) == 2
    with pytest.raises(InputError, match="HDU 4 missing"):
        read_psfield(path, "i")
    with pytest.raises(InputError, match="HDU 6 missing"):
        read_psfield_stats(path, "r")
    with pytest.raises(InputError, match="cannot read"):
        read_psfield(tmp_path / "missing.fit", "r")
    with pytest.raises(DataIdError):
        read_psfield(path, "y")


def test_stats(tmp_path: Path) -> None:
    stats = read_psfield_stats(write_psfield(tmp_path / "ps.fit"), "i")
    assert stats.psf_width == 3.5 and stats.psf_sigma1 == 4.5 and stats.skysig == 3.5 + 7


PSFIELDS = {
    "4192": "4192/40/objcs/4/psField-004192-4-0300.fit",
    "6377": "6377/40/objcs/4/psField-006377-4-0399.fit",
}


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(PSFIELDS))
@pytest.mark.parametrize("band", list("ugriz"))
def test_real_psfield(demo_dir: Path, run: str, band: str) -> None:
    path = demo_dir / "input" / PSFIELDS[run]
    components = read_psfield(path, band)
    assert len(components) == 4
    with fits.open(path) as hdul:
        counts = hdul["ugriz".index(band) + 1].data["counts"]
    for component, count in zip(components, counts, strict=True):
        assert component.coeffs.shape == (3, 3)
        assert component.basis.shape == (51, 51)
        assert component.basis.sum() == pytest.approx(count, rel=1e-4, abs=1e-2)
        assert not component.basis[:10].any() and not component.basis[:, 41:].any()  # zero outside [10:41]
    stats = read_psfield_stats(path, band)
    assert 1.0 < stats.psf_width < 1.5
    assert stats.gain == pytest.approx([1.6, 3.995, 4.76, 4.885, 4.775]["ugriz".index(band)], rel=1e-6)
