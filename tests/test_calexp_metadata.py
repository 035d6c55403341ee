"""calexp metadata (issue 13 item 3): observing conditions, times, PSF width and zero point, against the
tsField and fpC read independently with astropy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData
from astropy.time import Time

from processccd.sdss.fpc import FpcFrame
from processccd.tasks.make_exposure import observation_time_cards

FRAMES = [(run, field, band) for run, field in ((4192, 300), (6377, 399)) for band in "ugriz"]
# sdss-inputs.md §4: core FWHM [px] of a Gaussian fit to the psField PSF at the frame centre
CORE_FWHM_PX = {(4192, "u"): 3.27, (6377, "u"): 2.95, (4192, "g"): 3.04, (6377, "g"): 2.98, (4192, "r"): 2.59,
                (6377, "r"): 2.45, (4192, "i"): 2.49, (6377, "i"): 2.41, (4192, "z"): 2.71, (6377, "z"): 2.75}


def test_mid_exposure_is_the_mean_row_time_minus_half_the_drift() -> None:
    """Row y is read at mjd + y·C_OBS after integrating EXPTIME: mid = mjd + 680·C_OBS - EXPTIME/2 (1361 rows)."""
    header = fits.Header({"C_OBS": 26322})
    frame = FpcFrame(image=np.zeros((1, 1), np.float32), soft_bias=1000.0, exptime=53.907456, header=header)
    cards = observation_time_cards(52931.2, frame, 1361, Path("fpC"))
    expected = 52931.2 + (680 * 0.026322 - 53.907456 / 2) / 86400
    assert cards["MJD-AVG"][0] == pytest.approx(expected, abs=1e-9)
    assert cards["DATE-AVG"][0] == Time(expected, format="mjd", scale="tai").isot  # 3 decimals, as astropy
    assert cards["TIMESYS"][0] == "TAI"
    no_c_obs = FpcFrame(frame.image, 1000.0, 53.907456, fits.Header())  # C_OBS = EXPTIME / 2048 rows
    assert observation_time_cards(52931.2, no_c_obs, 1361, Path("fpC"))["MJD-AVG"][0] == pytest.approx(
        52931.2 + (680 * 53.907456 / 2048 - 53.907456 / 2) / 86400, abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("run, field, band", FRAMES)
def test_calexp_metadata_matches_tsfield(demo_dir: Path, demo_output: Path, run: int, field: int,
                                         band: str) -> None:
    f = "ugriz".index(band)
    root = demo_dir / "input" / str(run) / "40"
    with fits.open(root / "calibChunks" / "4" / f"tsField-{run:06d}-4-40-{field:04d}.fit") as hdul:
        ts = hdul[1].data[0]
        aa, kk, airmass, gain, mjd = (float(ts[name][f]) for name in ("aa", "kk", "airmass", "gain", "mjd"))
    fpc = fits.getheader(root / "corr" / "4" / f"fpC-{run:06d}-{band}4-{field:04d}.fit.gz")
    exptime = float(fpc["EXPTIME"])
    path = demo_output / "sci-results" / str(run) / "4" / band / "calexp" / f"calexp-{run:06d}-{band}4-{field:04d}.fits"
    header = fits.getheader(path)

    assert (header["RUN"], header["RERUN"], header["CAMCOL"], header["FIELD"], header["FILTER"]) == (
        run, 40, 4, field, band)
    assert header["EXPTIME"] == exptime == pytest.approx(53.907456)
    assert header["AIRMASS"] == pytest.approx(airmass, rel=1e-12)
    assert header["GAIN"] == pytest.approx(gain, rel=1e-12)
    assert header["MJD"] == pytest.approx(mjd, abs=1e-9)
    assert mjd == pytest.approx(fpc["TAI"] / 86400.0, abs=1e-7)  # tsField mjd: row 0 read (fpC TAI)
    mid = mjd + (680 * fpc["C_OBS"] * 1e-6 - exptime / 2) / 86400.0
    assert header["TIMESYS"] == "TAI"
    assert header["MJD-AVG"] == pytest.approx(mid, abs=1e-9)
    assert header["DATE-AVG"] == Time(mid, format="mjd", scale="tai").isot
    assert header["WCSSRC"] == "asTrans"
    # the PSF model's FWHM at the frame centre: the core FWHM of sdss-inputs.md §4 (0.396"/px)
    assert header["SEEING"] / 0.396 == pytest.approx(CORE_FWHM_PX[run, band], abs=0.03)
    # zero point: the photocal fit, its tsField prior kept beside it
    prior = -(aa + kk * airmass) + 2.5 * math.log10(exptime)
    assert header["ZPSOURCE"] == "photocal"
    assert header["ZPPRIOR"] == pytest.approx(prior, abs=1e-6)
    assert header["MAGZERO"] == pytest.approx(prior, abs=0.1)
    assert header["FLUXMAG0"] == pytest.approx(10 ** (0.4 * header["MAGZERO"]), rel=1e-12)
    assert header["APCNSTAR"] >= 10 and header["APCORDER"] == 2 and 0.97 < header["APCORR"] < 1.03


@pytest.mark.slow
def test_ccddata_reads_the_calexp_with_its_metadata(demo_output: Path) -> None:
    """astropy's CCDData merges the primary header (where the metadata is) into the IMAGE extension's."""
    path = demo_output / "sci-results" / "4192" / "4" / "r" / "calexp" / "calexp-004192-r4-0300.fits"
    ccd = CCDData.read(path, hdu="IMAGE")
    assert ccd.wcs is not None and ccd.unit == "adu" and ccd.data.shape == (1361, 2048)
    ccd = CCDData.read(path)  # the empty primary HDU is skipped: IMAGE data, primary cards merged into meta
    assert ccd.meta["EXPTIME"] == pytest.approx(53.907456) and ccd.meta["FILTER"] == "r"
    assert ccd.meta["SEEING"] > 0 and ccd.meta["WCSSRC"] == "asTrans"
    # the time keywords are WCS keywords (FITS WCS paper VII): astropy moves them into the WCS
    header = fits.getheader(path)
    assert (ccd.wcs.wcs.mjdavg, ccd.wcs.wcs.dateavg, ccd.wcs.wcs.timesys) == (
        header["MJD-AVG"], header["DATE-AVG"], "TAI")
