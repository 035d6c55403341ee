"""Smoke tests of bench/demo_benchmark.py's helpers (no timing): SExtractor filter files, thresholds, launcher."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def demo_benchmark():
    """bench/demo_benchmark.py imported as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("demo_benchmark", BENCH_DIR / "demo_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("sigma", [0.9, 1.1, 1.4, 2.5])
def test_conv_kernel_is_a_centred_gaussian_of_the_psf_width(demo_benchmark, sigma: float) -> None:
    kernel = demo_benchmark.gaussian_conv_kernel(sigma)
    size = kernel.shape[0]
    assert kernel.shape == (size, size) and size % 2 == 1
    assert size >= 2 * 3 * sigma + 1
    centre = size // 2
    assert np.unravel_index(np.argmax(kernel), kernel.shape) == (centre, centre)
    np.testing.assert_allclose(kernel, kernel.T)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1])
    # second moment of the (nearly untruncated) kernel along x is sigma^2
    offsets = np.arange(size) - centre
    variance_x = np.sum(kernel * offsets[None, :] ** 2) / np.sum(kernel)
    assert variance_x == pytest.approx(sigma**2, rel=0.02)


def test_conv_file_round_trip(demo_benchmark, tmp_path: Path) -> None:
    kernel = demo_benchmark.gaussian_conv_kernel(1.2)
    path = tmp_path / "psf.conv"
    demo_benchmark.write_conv(path, kernel, "Gaussian sigma=1.2")
    lines = path.read_text().splitlines()
    assert lines[0] == "CONV NORM"
    assert lines[1].startswith("#")
    assert len(lines) == 2 + kernel.shape[0]
    np.testing.assert_allclose(demo_benchmark.read_conv(path), kernel, atol=1e-6)


def test_filtered_noise_factor_matches_white_noise_smoothing(demo_benchmark) -> None:
    sigma = 2.0
    kernel = demo_benchmark.gaussian_conv_kernel(sigma)
    factor = demo_benchmark.filtered_noise_factor(kernel)
    assert factor == pytest.approx(1.0 / (2.0 * np.sqrt(np.pi) * sigma), rel=0.01)
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(400, 400))
    from scipy.signal import fftconvolve

    smoothed = fftconvolve(noise, kernel / kernel.sum(), mode="valid")
    assert np.std(smoothed) == pytest.approx(factor, rel=0.05)


def test_parse_importtime(demo_benchmark) -> None:
    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:       120 |        120 |   click.core\n"
              "import time:       900 |      45210 | processccd.cli.process_ccd\n")
    assert demo_benchmark.parse_importtime(stderr, "processccd.cli.process_ccd") == pytest.approx(0.04521)
    with pytest.raises(ValueError):
        demo_benchmark.parse_importtime(stderr, "processccd.cli.export_results")


def test_run_child_reports_the_child_not_this_process(demo_benchmark) -> None:
    ballast = np.ones(30_000_000)  # 240 MB in this process must not show up as the child's peak RSS
    child = demo_benchmark.run_child([sys.executable, "-I", "-S", "-c", "x = bytearray(80_000_000)"])
    assert ballast[0] == 1.0
    assert 80 < child.peak_rss_mb < 200
    assert child.wall > 0 and child.cpu >= 0


def test_run_child_failure_exits_with_the_command(demo_benchmark) -> None:
    with pytest.raises(SystemExit, match="failed"):
        demo_benchmark.run_child([sys.executable, "-I", "-S", "-c", "raise SystemExit(3)"])


def test_sextractor_config_files_name_the_lsst_like_settings() -> None:
    config = {}
    for line in (BENCH_DIR / "sextractor" / "lsst-like.sex").read_text().splitlines():
        fields = line.split("#")[0].split(None, 1)
        if len(fields) == 2:
            config[fields[0]] = fields[1].strip()
    assert config["DETECT_MINAREA"] == "1"
    assert config["BACK_SIZE"] == "512"
    assert config["DEBLEND_NTHRESH"] == "1" and config["DEBLEND_MINCONT"] == "1"
    assert config["CLEAN"] == "N" and config["FILTER"] == "Y"
    assert config["PHOT_APERTURES"] == "14"  # a diameter: radius 7
    params = [line for line in (BENCH_DIR / "sextractor" / "lsst-like.param").read_text().splitlines()
              if line and not line.startswith("#")]
    assert params == ["NUMBER", "X_IMAGE", "Y_IMAGE", "FLUX_AUTO", "FLUX_APER(1)", "XWIN_IMAGE", "YWIN_IMAGE",
                      "FLAGS"]


def test_model_fit_compare_reports_the_differences_it_was_given(tmp_path: Path, capsys) -> None:
    """bench/model_fit_compare.py compare on two synthetic src trees with known differences."""
    from argparse import Namespace

    from astropy.table import Table

    spec = importlib.util.spec_from_file_location("model_fit_compare", BENCH_DIR / "model_fit_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    n = 100
    flux = np.linspace(1000.0, 2000.0, n)
    err = np.where(np.arange(n) < 60, 10.0, 100.0)  # S/N > 50 for the first 60 sources only
    before = {"id": np.arange(n), "flux.psf": flux.copy(), "classification.extendedness": np.ones(n)}
    for name in ("exp", "dev", "combo"):
        before[f"multishapelet.{name}.flux"], before[f"multishapelet.{name}.flux.err"] = flux.copy(), err
    after = {key: value.copy() for key, value in before.items()}
    after["multishapelet.exp.flux"][:60] *= 1.0 + 2e-5  # bright: 2e-5 relative
    after["multishapelet.exp.flux"][70] = np.nan  # a faint source becomes NaN
    after["classification.extendedness"][[3, 4]] = 0.0  # two flips
    after["flux.psf"][5] *= 1.0 + 1e-3
    for root, columns in (("before", before), ("after", after)):
        directory = tmp_path / root / "sci-results"
        directory.mkdir(parents=True)
        Table(columns).write(directory / "src-004192-r4-0300.fits")
    module.cmd_compare(Namespace(before=tmp_path / "before", after=tmp_path / "after"))
    out = capsys.readouterr().out
    exp_line = next(line for line in out.splitlines() if line.startswith("multishapelet.exp.flux"))
    assert "n   60 median |rel| 2.00e-05" in exp_line and "NaN pattern changes 1" in exp_line
    assert float(exp_line.split("scatter ")[1].split()[0]) < 1e-12  # the same shift for all: no scatter
    assert "multishapelet.dev.flux       S/N>50: n   60 median |rel| 0.00e+00" in out
    assert "extendedness flips: 2" in out
    assert "flux.psf: max rel 1.00e-03, NaN changes 0" in out and "id" not in out.split("other columns:")[1]
