"""The reproduction gate: the 10 demo frames, exported, within configs/compare-gate.yaml of the 2013 list.

The demo is run once per session (the `demo_output` fixture, shared with the other slow tests, default -j);
the perturbation cases then show that a regression in each gated column family fails the gate by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from processccd.comparison import compare_lists
from processccd.gate import check_gate, default_gate_path, load_gate
from processccd.source_list import ID_FRAME_SHIFT, read_list

GATE_PATH = Path(__file__).resolve().parents[1] / "configs" / "compare-gate.yaml"
FAILING_FIGURE = re.compile(r"^FAIL [^:]+: (\S+) = ")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def expected(demo_dir: Path) -> Table:
    return read_list(demo_dir / "detected-sources.txt.expected")


@pytest.fixture(scope="module")
def ours(demo_list: Path) -> Table:
    return read_list(demo_list)


def gate_failures(ours: Table, expected: Table) -> list[str]:
    return check_gate(compare_lists(ours, expected), load_gate(GATE_PATH))


def test_the_repository_gate_is_the_packaged_one() -> None:
    assert GATE_PATH.read_bytes() == default_gate_path().read_bytes()


def test_the_demo_reproduces_the_2013_list_within_the_gate(ours: Table, expected: Table) -> None:
    assert len(load_gate(GATE_PATH)) > 100
    failures = gate_failures(ours, expected)
    assert not failures, "figures out of bounds:\n" + "\n".join(failures)


def test_the_small_demo_reproduces_its_2013_list_within_its_gate(ours: Table, demo_dir: Path) -> None:
    """bin/demo.sh --small: the 6 frames (each processed on its own, so as in the 10-frame run) against
    detected-sources.txt.expected_small through configs/compare-gate-small.yaml."""
    expected_small = read_list(demo_dir / "detected-sources.txt.expected_small")
    frames = set((np.asarray(expected_small["id"]) >> ID_FRAME_SHIFT).tolist())
    assert len(frames) == 6 and len(expected_small) == 2889
    subset = ours[np.isin(np.asarray(ours["id"]) >> ID_FRAME_SHIFT, list(frames))]
    small_gate = load_gate(GATE_PATH.with_name("compare-gate-small.yaml"))
    failures = check_gate(compare_lists(subset, expected_small), small_gate)
    assert not failures, "figures out of bounds:\n" + "\n".join(failures)


def scale(column: str, factor: float) -> Callable[[Table], None]:
    def change(table: Table) -> None:
        table[column] = table[column] * factor
    return change


def shift(column: str, offset: float) -> Callable[[Table], None]:
    def change(table: Table) -> None:
        table[column] = table[column] + offset
    return change


def alternate(column: str, amplitude: float) -> Callable[[Table], None]:
    """Multiply by 1 ± amplitude, alternating row by row: the median stays, the scatter grows."""
    def change(table: Table) -> None:
        table[column] = table[column] * (1 + amplitude * (-1) ** np.arange(len(table)))
    return change


def flip_every(column: str, step: int) -> Callable[[Table], None]:
    def change(table: Table) -> None:
        values = np.array(table[column])
        if values.dtype == bool:
            values[::step] = ~values[::step]
        else:
            values[::step] = 1.0 - values[::step]
        table[column] = values
    return change


def nan_every(column: str, step: int) -> Callable[[Table], None]:
    def change(table: Table) -> None:
        values = np.array(table[column], dtype=np.float64)
        values[::step] = np.nan
        table[column] = values
    return change


def drop_every(step: int) -> Callable[[Table], None]:
    def change(table: Table) -> None:
        table.remove_rows(np.arange(0, len(table), step))
    return change


def flag_bright(column: str) -> Callable[[Table], None]:
    """Flip a flag on the 10 brightest sources of the list."""
    def change(table: Table) -> None:
        bright = np.argsort(-np.asarray(table["flux.psf"] / table["flux.psf.err"]))[:10]
        values = np.array(table[column])
        values[bright] = ~values[bright]
        table[column] = values
    return change


# one case per gated column family: (perturbation of our exported list, a figure the gate must name)
REGRESSIONS: dict[str, tuple[Callable[[Table], None], str]] = {
    "detection": (drop_every(50), "completeness_all"),
    "gaussian flux": (scale("flux.gaussian", 1.01), "gaussian_ratio_median_snr50"),
    "gaussian flux scatter": (alternate("flux.gaussian", 1e-4), "gaussian_ratio_scatter_snr50"),
    "exp flux": (scale("multishapelet.exp.flux", 1.01), "exp_ratio_median_snr50"),
    "dev flux": (scale("multishapelet.dev.flux", 1.01), "dev_ratio_median_snr50"),
    "combo flux": (scale("multishapelet.combo.flux", 1.01), "combo_ratio_median_snr50"),
    "model flux scatter": (alternate("multishapelet.combo.flux", 2e-3), "combo_ratio_scatter_snr50"),
    "psf flux after apcorr": (scale("flux.psf", 1.0001), "psf_ratio_median_all"),
    "aperture correction": (scale("aperturecorrection", 1.0001), "apcorr_ratio_median_all"),
    "sinc flux": (scale("flux.sinc", 1.0001), "sinc_ratio_median_snr50"),
    "extendedness": (flip_every("classification.extendedness", 100), "agree_extendedness_all"),
    "shape flags": (flip_every("shape.sdss.flags", 100), "agree_shape_flags_all"),
    "pixel flags": (flag_bright("flags.pixel.edge"), "agree_edge_snr50"),
    "ids": (shift("id", 1), "id_equal_all"),
    "centroids": (shift("centroid.sdss.x", 1e-4), "centroid_dx_median_all"),
    "moments ixx": (scale("shape.sdss.ixx", 1.0001), "ixx_ratio_median_all"),
    "moments ixy": (shift("shape.sdss.ixy", 1e-4), "ixy_diff_median_all"),
    "NaN pattern": (nan_every("flux.sinc", 200), "nan_mismatch_flux_sinc_all"),
}


@pytest.mark.parametrize("case", list(REGRESSIONS))
def test_a_regression_in_each_column_family_fails_the_gate_by_name(case: str, ours: Table,
                                                                     expected: Table) -> None:
    perturb, figure = REGRESSIONS[case]
    changed = ours.copy()
    perturb(changed)
    failures = gate_failures(changed, expected)
    assert all(FAILING_FIGURE.match(line) for line in failures)
    named = {FAILING_FIGURE.match(line).group(1) for line in failures}
    assert figure in named, f"{case}: the gate did not name {figure}; it failed {sorted(named)}"
