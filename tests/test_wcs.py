"""Tests of the TAN-SIP fit to the exact SDSS transform and its FITS header round trip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS, Sip

from processccd.errors import InputError
from processccd.sdss.astrans import AsTrans, read_astrans
from processccd.wcs import fit_tan_sip, wcs_from_fpc_header, wcs_max_error_mas

PIXEL_DEG = 0.396 / 3600.0
FRAMES = [(run, field, band) for run, field in [(4192, 300), (6377, 399)] for band in "ugriz"]

# Distortion of the size found in the real asTrans files (z of run 4192): cubic in column only.
DISTORTED = AsTrans(
    a=351.5676, b=PIXEL_DEG, c=2e-8, d=-0.0090, e=1e-8, f=PIXEL_DEG,
    d_row=(-0.0192, 8.2e-5, -7.8e-8, 2.0e-11), d_col=(-0.078, 6.9e-4, -8.9e-7, 2.9e-10),
    cs_row=0.0, cs_col=0.0, cc_row=0.0, cc_col=0.0, ri_cut=100.0,
    node=95.0, incl=0.0, mjd=52931.2, airmass=1.2, mu_err=0.05, nu_err=0.06,
)


def header_round_trip(wcs: WCS, path: Path) -> WCS:
    """Write the WCS into a FITS image header and read it back."""
    fits.PrimaryHDU(np.zeros((4, 4), dtype=np.float32), header=wcs.to_header(relax=True)).writeto(path)
    with fits.open(path) as hdul:
        return WCS(hdul[0].header)


@pytest.fixture(scope="module")
def distorted_wcs() -> WCS:
    return fit_tan_sip(DISTORTED.pixel_to_sky)


def test_fit_matches_transform(distorted_wcs: WCS) -> None:
    assert wcs_max_error_mas(distorted_wcs, DISTORTED.pixel_to_sky) <= 1.0
    centre = distorted_wcs.pixel_to_world_values(1023.5, 680.0)
    np.testing.assert_allclose(centre, DISTORTED.pixel_to_sky(1023.5, 680.0), rtol=0, atol=1e-9)


def test_fit_orientation(distorted_wcs: WCS) -> None:
    """RA grows along +y, Dec along +x, 0.396"/pixel; reference pixel at the frame centre (FITS units)."""
    cd = distorted_wcs.wcs.cd
    assert abs(cd[0, 0]) < 1e-7 and abs(cd[1, 1]) < 1e-7
    assert cd[0, 1] == pytest.approx(PIXEL_DEG, rel=0.01) and cd[1, 0] == pytest.approx(PIXEL_DEG, rel=0.01)
    np.testing.assert_allclose(distorted_wcs.wcs.crpix, [1024.5, 681.0], atol=1e-3)


def test_error_measure_discriminates(distorted_wcs: WCS) -> None:
    shifted = replace(DISTORTED, d=DISTORTED.d + 5.0 / 3.6e6)  # 5 mas north
    assert wcs_max_error_mas(distorted_wcs, shifted.pixel_to_sky) == pytest.approx(5.0, abs=1.0)
    tan_only = fit_tan_sip(DISTORTED.pixel_to_sky, sip_degree=0)
    assert wcs_max_error_mas(tan_only, DISTORTED.pixel_to_sky) > 10.0


def test_fits_header_round_trip(distorted_wcs: WCS, tmp_path: Path) -> None:
    header = distorted_wcs.to_header(relax=True)
    assert (header["CTYPE1"], header["CTYPE2"]) == ("RA---TAN-SIP", "DEC--TAN-SIP")
    assert header["A_ORDER"] == header["B_ORDER"] == header["AP_ORDER"] == header["BP_ORDER"] == 3
    restored = header_round_trip(distorted_wcs, tmp_path / "wcs.fits")
    assert restored.wcs.ctype[0] == "RA---TAN-SIP" and restored.sip is not None
    assert wcs_max_error_mas(restored, DISTORTED.pixel_to_sky) <= 1.0
    x = np.linspace(-0.5, 2047.5, 57)
    y = np.linspace(-0.5, 1360.5, 57)
    np.testing.assert_allclose(
        restored.pixel_to_world_values(x, y), distorted_wcs.pixel_to_world_values(x, y), rtol=0, atol=1e-11
    )


def test_world_to_pixel_and_inverse_sip(distorted_wcs: WCS) -> None:
    """Sky -> pixel by astropy's iteration and by the fitted AP/BP polynomials alone."""
    xx, yy = np.meshgrid(np.linspace(-0.5, 2047.5, 41), np.linspace(-0.5, 1360.5, 29))
    x, y = xx.ravel(), yy.ravel()
    ra, dec = DISTORTED.pixel_to_sky(x, y)
    x_back, y_back = distorted_wcs.world_to_pixel_values(ra, dec)
    assert np.abs(x_back - x).max() < 0.005 and np.abs(y_back - y).max() < 0.005
    pixels = np.stack([x, y], axis=1)
    sip = distorted_wcs.sip
    assert np.abs(sip.foc2pix(sip.pix2foc(pixels, 0), 0) - pixels).max() < 0.001
    zero = np.zeros_like(sip.ap)
    without_inverse = Sip(sip.a, sip.b, zero, zero, sip.crpix)
    assert np.abs(without_inverse.foc2pix(sip.pix2foc(pixels, 0), 0) - pixels).max() > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("run, field, band", FRAMES)
def test_real_frames_fit_within_1_mas(
    demo_dir: Path, tmp_path: Path, run: int, field: int, band: str
) -> None:
    path = demo_dir / "input" / str(run) / "40" / "astrom" / f"asTrans-{run:06d}.fit"
    transform = read_astrans(path, 4, band, field)
    wcs = fit_tan_sip(transform.pixel_to_sky)
    assert wcs_max_error_mas(wcs, transform.pixel_to_sky) <= 1.0
    restored = header_round_trip(wcs, tmp_path / "wcs.fits")
    assert wcs_max_error_mas(restored, transform.pixel_to_sky) <= 1.0


def known_tan_sip() -> WCS:
    """A TAN-SIP WCS with rotated, skewed CD and quadratic + cubic SIP terms, near the pole of a high Dec."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    wcs.wcs.crpix = [1024.5, 681.0]
    wcs.wcs.crval = [123.4, 71.2]
    wcs.wcs.cd = [[-3.0e-5, 1.1e-4], [1.05e-4, 2.5e-5]]
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[2, 0], a[1, 1], a[0, 2], a[3, 0], a[1, 2] = 2e-6, -1e-6, 5e-7, 3e-10, -2e-10
    b[2, 0], b[1, 1], b[0, 2], b[0, 3], b[2, 1] = -1e-6, 4e-7, 1.5e-6, 2e-10, 1e-10
    wcs.sip = Sip(a, b, None, None, wcs.wcs.crpix)
    wcs.wcs.set()
    return wcs


def test_linear_fit_recovers_known_tan_sip() -> None:
    """A transform that is itself TAN-SIP of degree 3 is reproduced exactly: CD, A, B, CRVAL."""
    truth = known_tan_sip()
    fitted = fit_tan_sip(lambda x, y: truth.pixel_to_world_values(x, y))
    np.testing.assert_allclose(fitted.wcs.crval, truth.wcs.crval, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fitted.wcs.cd, truth.wcs.cd, rtol=1e-9)
    np.testing.assert_allclose(fitted.sip.a, truth.sip.a, rtol=0, atol=1e-14)
    np.testing.assert_allclose(fitted.sip.b, truth.sip.b, rtol=0, atol=1e-14)
    assert wcs_max_error_mas(fitted, lambda x, y: truth.pixel_to_world_values(x, y)) < 1e-4


def test_lower_sip_degree_is_honoured() -> None:
    quadratic = fit_tan_sip(DISTORTED.pixel_to_sky, sip_degree=2)
    header = quadratic.to_header(relax=True)
    assert header["A_ORDER"] == header["B_ORDER"] == header["AP_ORDER"] == 2
    assert wcs_max_error_mas(quadratic, DISTORTED.pixel_to_sky) > 1.0  # the cubic column term is missing
    assert fit_tan_sip(DISTORTED.pixel_to_sky, sip_degree=0).sip is None




# --- the fpC header's TAN WCS (the fallback without asTrans) ---------------------------------------------
FPC_CARDS = {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 1024.5, "CRPIX2": 744.5,
             "CRVAL1": 351.648396, "CRVAL2": 0.1036482, "CD1_1": -1.85e-08, "CD1_2": 1.0999e-04,
             "CD2_1": 1.0995e-04, "CD2_2": -6.7e-09}  # 4192 g (rounded)


def test_fpc_header_wcs_keeps_the_fits_pixel_convention() -> None:
    """CRPIX is 1-based: our pixel centre (CRPIX - 1) is CRVAL; a step of one pixel in x is the CD column 1."""
    wcs = wcs_from_fpc_header(FPC_CARDS, "fpC.fit")
    ra, dec = wcs.pixel_to_world_values(1023.5, 743.5)
    assert (float(ra), float(dec)) == pytest.approx((351.648396, 0.1036482), abs=1e-12)
    ra1, dec1 = wcs.pixel_to_world_values(1024.5, 743.5)  # +1 column: Dec grows by CD2_1
    assert float(dec1) - float(dec) == pytest.approx(1.0995e-04, rel=1e-6)
    assert (float(ra1) - float(ra)) * np.cos(np.radians(float(dec))) == pytest.approx(-1.85e-08, abs=1e-10)
    assert wcs.pixel_shape == (2048, 1361)
    assert wcs.wcs.ctype[0] == "RA---TAN" and not wcs.has_distortion


@pytest.mark.parametrize("change, message", [
    ({"CD2_1": None}, "CD2_1 missing"),
    ({"CTYPE1": "RA---SIN"}, "expected RA---TAN"),
    ({"CRVAL1": "nan"}, "CRVAL1 = 'nan' is not a finite number"),
    ({"CD1_1": 0.0, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.0}, "singular CD"),
])
def test_fpc_header_wcs_errors_name_the_file(change: dict, message: str) -> None:
    cards = {key: value for key, value in {**FPC_CARDS, **change}.items() if value is not None}
    with pytest.raises(InputError, match=message) as info:
        wcs_from_fpc_header(cards, Path("/data/fpC-x.fit.gz"))
    assert str(info.value).startswith("/data/fpC-x.fit.gz: ")


@pytest.mark.slow
@pytest.mark.parametrize("run, field, band", FRAMES)
def test_fpc_header_wcs_agrees_with_astrans(demo_dir: Path, run: int, field: int, band: str) -> None:
    """sdss-inputs.md §1: the header WCS is the asTrans solution to < 0.1" on the trimmed frame; with CRPIX read
    as 0-based it would be one pixel (0.56") off."""
    root = demo_dir / "input" / str(run) / "40"
    transform = read_astrans(root / "astrom" / f"asTrans-{run:06d}.fit", 4, band, field)
    header = fits.getheader(root / "corr" / "4" / f"fpC-{run:06d}-{band}4-{field:04d}.fit.gz")
    wcs = wcs_from_fpc_header(header, "fpC")
    assert wcs_max_error_mas(wcs, transform.pixel_to_sky) < 100.0
    shifted = wcs.deepcopy()
    shifted.wcs.crpix = shifted.wcs.crpix + 1.0
    assert wcs_max_error_mas(shifted, transform.pixel_to_sky) > 500.0


@pytest.mark.slow
def test_no_astrans_and_no_header_wcs_is_one_error_naming_both(demo_dir: Path, tmp_path: Path) -> None:
    from fault_data import FPC_Z, edit_fits, mirror_input
    from processccd.butler import Butler
    from processccd.dataid import DataId
    from processccd.tasks.make_exposure import make_exposure

    repo = mirror_input(demo_dir / "input", tmp_path / "input")
    (repo / "4192" / "40" / "astrom" / "asTrans-004192.fit").unlink()
    edit_fits(repo, FPC_Z, lambda hdul: hdul[0].header.remove("CD2_1"))
    with pytest.raises(InputError, match="asTrans-004192.fit: asTrans file not found; and .*fpC-004192-z4-0300"
                                         r".fit.gz: no WCS in the fpC header \(keyword\(s\) CD2_1 missing\)"):
        make_exposure(Butler(repo), DataId(4192, 4, 300, "z", 40))
