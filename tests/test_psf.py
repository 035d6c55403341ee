"""Tests of the PSF models: the Psf interface rules, GaussianPsf and the SDSS KL PSF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from processccd.errors import InputError
from processccd.psf import KERNEL_SIZE, SdssKLPsf, adaptive_gaussian_width
from processccd.sdss.psfield import KLComponent
from reference_impl.psf import GaussianPsf, normalized_kernel, unit_sum_image

FWHM_PER_SIGMA = 2.3548


def centroid(image: np.ndarray) -> tuple[float, float]:
    """Unweighted first moments (x, y) of a stamp, in stamp pixels."""
    yy, xx = np.indices(image.shape)
    total = image.sum()
    return float((image * xx).sum() / total), float((image * yy).sum() / total)


def adaptive_moments(image: np.ndarray, iterations: int = 60) -> tuple[float, float, float, float, float]:
    """Gaussian-weighted adaptive moments (x, y, Ixx, Iyy, Ixy) of a stamp (weight matched to the image)."""
    yy, xx = np.indices(image.shape, dtype=np.float64)
    cx, cy = (image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2
    ixx = iyy = 1.5
    ixy = 0.0
    for _ in range(iterations):
        dx, dy = xx - cx, yy - cy
        det = ixx * iyy - ixy * ixy
        weighted = image * np.exp(-0.5 * (iyy * dx * dx - 2 * ixy * dx * dy + ixx * dy * dy) / det)
        total = weighted.sum()
        cx += (weighted * dx).sum() / total
        cy += (weighted * dy).sum() / total
        dx, dy = xx - cx, yy - cy
        ixx = 2 * (weighted * dx * dx).sum() / total
        iyy = 2 * (weighted * dy * dy).sum() / total
        ixy = 2 * (weighted * dx * dy).sum() / total
    return cx, cy, ixx, iyy, ixy


# ---- the shared Psf rules, on a Gaussian with known truth ----


@pytest.mark.parametrize("x, y", [(100.3, 200.7), (0.0, 0.0), (55.5, 12.49), (2047.2, 1360.8)])
def test_gaussian_compute_image_is_centred_on_the_position(x: float, y: float) -> None:
    psf = GaussianPsf(1.3)
    image = unit_sum_image(psf, x, y)
    assert image.shape == (KERNEL_SIZE, KERNEL_SIZE)
    assert image.sum() == pytest.approx(1.0)
    origin_x, origin_y = np.floor(x + 0.5) - KERNEL_SIZE // 2, np.floor(y + 0.5) - KERNEL_SIZE // 2
    cx, cy, *_ = adaptive_moments(image)
    assert cx + origin_x == pytest.approx(x, abs=1e-3) and cy + origin_y == pytest.approx(y, abs=1e-3)
    # the discrete first moment of a truncated Lanczos-5 kernel is 0.2895 for a 0.3 px shift
    cx, cy = centroid(image)
    assert cx + origin_x == pytest.approx(x, abs=0.015) and cy + origin_y == pytest.approx(y, abs=0.015)


def test_gaussian_peak_normalised_and_moments() -> None:
    psf = GaussianPsf(1.3)
    assert psf.compute_image(10.0, 20.0)[15, 15] == pytest.approx(1.0)
    _, _, ixx, iyy, ixy = adaptive_moments(normalized_kernel(psf, 10.0, 20.0))
    assert ixx == pytest.approx(1.69, rel=1e-3) and iyy == pytest.approx(1.69, rel=1e-3)
    assert ixy == pytest.approx(0.0, abs=1e-9)


# ---- SdssKLPsf on synthetic components ----


def gaussian_basis(sigma_x: float, sigma_y: float, size: int = 51) -> np.ndarray:
    yy, xx = np.indices((size, size)) - size // 2
    return np.exp(-0.5 * (xx**2 / sigma_x**2 + yy**2 / sigma_y**2))


def test_kl_kernel_is_the_polynomial_weighted_sum_of_trimmed_bases() -> None:
    # component 0: amplitude 1 + 2 (0.001 y); component 1: amplitude 3 (0.001 x) + 0.5 (0.001 x)(0.001 y)
    c0 = np.array([[1.0], [2.0]])
    c1 = np.array([[0.0, 3.0], [0.0, 0.5]])
    b0, b1 = gaussian_basis(1.0, 2.0), gaussian_basis(3.0, 1.5)
    psf = SdssKLPsf([KLComponent(c0, b0), KLComponent(c1, b1)])
    x, y = 1500.0, 400.0
    a0 = 1 + 2 * 0.4
    a1 = 3 * 1.5 + 0.5 * 1.5 * 0.4
    np.testing.assert_allclose(psf.component_amplitudes(x, y), [a0, a1])
    expected = a0 * b0[10:41, 10:41] + a1 * b1[10:41, 10:41]
    np.testing.assert_allclose(psf.kernel(x, y), expected, rtol=1e-12)
    # the SDSS half-pixel convention shifts the polynomial argument only
    shifted = SdssKLPsf([KLComponent(c0, b0), KLComponent(c1, b1)], sdss_offset=0.5)
    np.testing.assert_allclose(shifted.component_amplitudes(x - 0.5, y - 0.5), [a0, a1])


def test_kl_kernel_equals_numpys_tensor_contraction_bit_for_bit() -> None:
    """The kernel is the contraction np.tensordot(amplitudes, basis, axes=1) bit for bit (the products depend on its
    rounding), at positions over the frame, for a 4-component PSF of 3 x 3 polynomial terms as in the psFields."""
    rng = np.random.default_rng(3)
    components = [KLComponent(rng.normal(size=(3, 3)), gaussian_basis(1.0 + k, 2.0 - 0.3 * k) * rng.normal())
                  for k in range(4)]
    psf = SdssKLPsf(components)
    for x, y in zip(rng.uniform(-20, 2070, 300), rng.uniform(-20, 1500, 300), strict=True):
        expected = np.tensordot(psf.component_amplitudes(x, y), psf.basis, axes=1)
        assert np.array_equal(psf.kernel(x, y), expected)


def test_kl_first_coefficient_index_is_the_row_power() -> None:
    basis = gaussian_basis(1.0, 1.0)
    psf = SdssKLPsf([KLComponent(np.array([[0.0], [1.0]]), basis)])  # amplitude = 0.001 y
    assert psf.kernel(x=0.0, y=2000.0).sum() == pytest.approx(2 * basis.sum())
    assert psf.kernel(x=2000.0, y=0.0).sum() == 0.0


def test_kl_construction_errors() -> None:
    one = np.ones((1, 1))
    with pytest.raises(ValueError, match="at least one"):
        SdssKLPsf([])
    with pytest.raises(ValueError, match="differ in shape"):
        SdssKLPsf([KLComponent(one, np.ones((51, 51))), KLComponent(one, np.ones((41, 41)))])
    with pytest.raises(ValueError, match="cannot be trimmed"):
        SdssKLPsf([KLComponent(one, np.ones((29, 29)))])


def test_kl_from_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        SdssKLPsf.from_file(tmp_path / "missing.fit", "r")


# ---- SdssKLPsf on the real psFields (sdss-inputs.md §4) ----

PSFIELDS = {
    "4192": "4192/40/objcs/4/psField-004192-4-0300.fit",
    "6377": "6377/40/objcs/4/psField-006377-4-0399.fit",
}
# Gaussian-weighted (core) FWHM [px] of the unit-sum 31x31 image at (1024, 680), §4 table "core FWHM"
CORE_FWHM = {
    ("4192", "u"): 3.27, ("4192", "g"): 3.04, ("4192", "r"): 2.59, ("4192", "i"): 2.49, ("4192", "z"): 2.71,
    ("6377", "u"): 2.95, ("6377", "g"): 2.98, ("6377", "r"): 2.45, ("6377", "i"): 2.41, ("6377", "z"): 2.75,
}  # fmt: skip
# un-normalised kernel sum at the trimmed-frame centre, §4 table
CENTRE_SUM = {
    ("4192", "u"): 0.990, ("4192", "g"): 0.984, ("4192", "r"): 1.007, ("4192", "i"): 1.021,
    ("4192", "z"): 0.993, ("6377", "u"): 0.975, ("6377", "g"): 0.996, ("6377", "r"): 1.022,
    ("6377", "i"): 1.014, ("6377", "z"): 1.023,
}  # fmt: skip
POSITIONS = [(100.3, 200.7), (1024.0, 680.0), (0.4, 0.2), (2047.4, 1360.6), (2047.5, 0.5), (0.0, 1360.0)]


@pytest.fixture(scope="module")
def real_psfs(demo_dir: Path) -> dict[tuple[str, str], SdssKLPsf]:
    return {
        (run, band): SdssKLPsf.from_file(demo_dir / "input" / path, band)
        for run, path in PSFIELDS.items()
        for band in "ugriz"
    }


@pytest.mark.slow
@pytest.mark.parametrize("frame", sorted(CORE_FWHM))
def test_real_kernel_sums(real_psfs: dict[tuple[str, str], SdssKLPsf], frame: tuple[str, str]) -> None:
    psf = real_psfs[frame]
    kernel = psf.kernel(1024.0, 680.5)
    assert kernel.shape == (31, 31)
    assert kernel.sum() == pytest.approx(CENTRE_SUM[frame], abs=0.002)
    assert 0.97 <= kernel.sum() <= 1.03
    assert np.unravel_index(np.argmax(kernel), kernel.shape) == (15, 15)
    corner_sums = [psf.kernel(x, y).sum() for x, y in POSITIONS[2:]]
    assert all(0.75 < s < 1.06 for s in corner_sums)


@pytest.mark.slow
@pytest.mark.parametrize("frame", sorted(CORE_FWHM))
def test_real_image_centroids(real_psfs: dict[tuple[str, str], SdssKLPsf], frame: tuple[str, str]) -> None:
    psf = real_psfs[frame]
    for x, y in POSITIONS:
        image = unit_sum_image(psf, x, y)
        assert image.sum() == pytest.approx(1.0)
        origin_x, origin_y = np.floor(x + 0.5) - 15, np.floor(y + 0.5) - 15
        cx, cy, *_ = adaptive_moments(image)
        assert abs(cx + origin_x - x) < 0.05 and abs(cy + origin_y - y) < 0.05
        cx, cy = centroid(image)  # the unweighted centroid feels the noisy wings of the basis
        assert abs(cx + origin_x - x) < 0.25 and abs(cy + origin_y - y) < 0.25


@pytest.mark.slow
@pytest.mark.parametrize("frame", sorted(CORE_FWHM))
def test_real_core_fwhm(real_psfs: dict[tuple[str, str], SdssKLPsf], frame: tuple[str, str]) -> None:
    _, _, ixx, iyy, _ = adaptive_moments(unit_sum_image(real_psfs[frame], 1024.0, 680.0))
    fwhm = FWHM_PER_SIGMA * np.sqrt((ixx + iyy) / 2)
    assert fwhm == pytest.approx(CORE_FWHM[frame], abs=0.03)
    assert 2.4 <= fwhm <= 3.3


def test_kl_psf_fits_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    components = [KLComponent(coeffs=rng.normal(size=(3, 3)), basis=rng.normal(size=(51, 51))) for _ in range(4)]
    psf = SdssKLPsf(components)
    psf.write_fits(tmp_path / "psf.fits")
    back = SdssKLPsf.read_fits(tmp_path / "psf.fits")
    for x, y in [(0.0, 0.0), (1024.3, 680.7), (2047.0, 1360.0)]:
        np.testing.assert_allclose(back.kernel(x, y), psf.kernel(x, y), rtol=1e-12)


@pytest.mark.parametrize(("n_components", "n_terms", "offset"), [(4, 3, 0.0), (3, 2, 0.5), (1, 4, -0.25)])
def test_kl_psf_file_is_byte_identical_to_astropys(tmp_path: Path, n_components: int, n_terms: int, offset: float
                                                   ) -> None:
    """write_fits assembles the bytes astropy writes for the table of COEFFS and BASIS columns."""
    from astropy.io import fits

    rng = np.random.default_rng(n_components)
    components = [KLComponent(coeffs=rng.normal(size=(n_terms, n_terms)), basis=rng.normal(size=(51, 51)))
                  for _ in range(n_components)]
    psf = SdssKLPsf(components, sdss_offset=offset)
    psf.write_fits(tmp_path / "ours.fits")
    columns = [fits.Column(name="COEFFS", format=f"{n_terms * n_terms}D", dim=f"({n_terms},{n_terms})",
                           array=psf.coeffs),
               fits.Column(name="BASIS", format=f"{KERNEL_SIZE**2}D", dim=f"({KERNEL_SIZE},{KERNEL_SIZE})",
                           array=psf.basis)]
    table = fits.BinTableHDU.from_columns(columns, name="SDSSKLPSF")
    table.header["SDSSOFF"] = (offset, "offset added to x, y in the polynomial")
    table.header["COMMENT"] = "a_k(x,y) = sum_rc COEFFS_k[r,c] (0.001 (y+SDSSOFF))^r (0.001 (x+SDSSOFF))^c"
    table.header["COMMENT"] = "PSF kernel(x,y) = sum_k a_k(x,y) BASIS_k, centre at the middle pixel"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / "astropy.fits")
    assert (tmp_path / "ours.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()


def gaussian_stamp(x0: float, y0: float, sigma_x: float, sigma_y: float, angle: float = 0.0) -> np.ndarray:
    """A 31 x 31 point-sampled elliptical Gaussian centred at (x0, y0), axes rotated by `angle`."""
    yy, xx = np.indices((KERNEL_SIZE, KERNEL_SIZE), dtype=np.float64)
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * (xx - x0) + s * (yy - y0), -s * (xx - x0) + c * (yy - y0)
    return np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))


@pytest.mark.parametrize("sigma", [1.3, 1.6, 2.0])  # (at 1.0 the point sampling shows: 0.998)
def test_adaptive_gaussian_width_of_a_circular_gaussian_is_its_sigma(sigma: float) -> None:
    # converged to 1e-4 in the weighted moment: the width to a few 1e-5
    assert adaptive_gaussian_width(gaussian_stamp(15.0, 15.0, sigma, sigma)) == pytest.approx(sigma, rel=2e-4)


def test_adaptive_gaussian_width_of_an_elliptical_gaussian_is_sqrt_ab() -> None:
    # a circular weight of variance s^2 on axes a, b is at its fixed point when a^2 b^2 = s^4
    width = adaptive_gaussian_width(gaussian_stamp(15.0, 15.0, 1.1, 1.7, angle=0.6))
    assert width == pytest.approx(np.sqrt(1.1 * 1.7), rel=5e-4)


def test_adaptive_gaussian_width_is_measured_about_the_fitted_centre() -> None:
    # about the stamp centre (15, 15) instead, the moment would gain (0.3^2 + 0.25^2) / 2: width 1.327
    assert adaptive_gaussian_width(gaussian_stamp(15.3, 14.75, 1.3, 1.3)) == pytest.approx(1.3, rel=5e-4)


def test_adaptive_gaussian_width_of_a_stamp_too_small_for_the_centroid_fit() -> None:
    # centroid.gaussian gives no centre within 3 px of an edge: the stamp centre is used
    from processccd.meas.centroid import gaussian_centroid

    yy, xx = np.indices((5, 5), dtype=np.float64)
    stamp = np.exp(-0.5 * ((xx - 2.0) ** 2 + (yy - 2.0) ** 2) / 1.0**2)
    assert np.isnan(gaussian_centroid(stamp, 2.0, 2.0)[0])
    assert adaptive_gaussian_width(stamp) == pytest.approx(1.0, rel=0.05)  # truncated at 2 sigma
