"""Tests of the comparison of two detected-sources lists, the gate and the `compare-results` command."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table, vstack
from click.testing import CliRunner

from processccd.cli.compare import main
from processccd.comparison import ALL_SCOPE, CompareReport, compare_lists, frame_label, match_sky
from processccd.errors import InputError
from processccd.gate import check_gate, default_gate_path, load_gate, parse_gate
from processccd.source_list import BOOL_COLUMNS, COLUMNS, FLOAT_COLUMNS, read_list, write_list
from processccd.stats import robust_scatter
from processccd.text_report import format_report

ARCSEC = 1.0 / 3600.0
FRAMES = {"4192 u": 4192_0_4_0300, "4192 r": 4192_2_4_0300, "6377 r": 6377_2_4_0111}


def make_catalog(n_per_frame: int = 300, seed: int = 1) -> Table:
    """A synthetic list: sources on a jittered 10" grid (no two within 6"), S/N from 3 to 3000."""
    rng = np.random.default_rng(seed)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in COLUMNS}
    for exp_id in FRAMES.values():
        grid = np.arange(n_per_frame)
        ra = 351.6 + (grid % 20) * 10 * ARCSEC + rng.uniform(-2, 2, n_per_frame) * ARCSEC
        dec = 0.1 + (grid // 20) * 10 * ARCSEC + rng.uniform(-2, 2, n_per_frame) * ARCSEC
        flux_err = rng.uniform(20, 40, n_per_frame)
        flux = flux_err * 10 ** rng.uniform(0.5, 3.5, n_per_frame)
        values = {
            "id": (exp_id << 26) + 1 + grid,
            "coord.ra": ra, "coord.dec": dec,
            "flux.psf": flux, "flux.psf.err": flux_err,
            "centroid.sdss.x": rng.uniform(20, 2020, n_per_frame),
            "centroid.sdss.y": rng.uniform(20, 1340, n_per_frame),
            "classification.extendedness": rng.integers(0, 2, n_per_frame).astype(float),
        }
        for name in COLUMNS:
            if name in values:
                column = values[name]
            elif name in BOOL_COLUMNS:
                column = rng.uniform(size=n_per_frame) < 0.1
            else:
                column = rng.uniform(0.5, 2.0, n_per_frame) * (flux if name.startswith(("flux", "multi")) else 1)
            columns[name].append(np.asarray(column))
    table = Table({name: np.concatenate(parts) for name, parts in columns.items()})
    table["flux.gaussian"][::17] = np.nan
    return table


@pytest.fixture
def catalog() -> Table:
    return make_catalog()


def snr(table: Table) -> np.ndarray:
    return np.asarray(table["flux.psf"] / table["flux.psf.err"])


def test_robust_scatter_of_a_gaussian_sample() -> None:
    sample = np.random.default_rng(3).normal(0.0, 2.0, 20000)
    assert robust_scatter(sample) == pytest.approx(2.0, rel=0.03)
    assert math.isnan(robust_scatter(np.zeros(0)))


def test_match_is_one_to_one_and_closest_first() -> None:
    dec = np.zeros(3)
    ours_ra = np.array([10.0, 10.0 + 0.3 * ARCSEC, 10.0 + 5 * ARCSEC])
    exp_ra = np.array([10.0 + 0.2 * ARCSEC, 10.0 + 0.5 * ARCSEC])
    i_ours, i_exp, separation = match_sky(ours_ra, dec, exp_ra, dec[:2], 1.0)
    pairs = sorted(zip(i_ours.tolist(), i_exp.tolist(), strict=True))
    # ours 1 is closest to expected 0 (0.1"), so ours 0 must take expected 1 (0.5")
    assert pairs == [(0, 1), (1, 0)]
    assert sorted(separation) == pytest.approx([0.1, 0.5], abs=1e-6)
    assert len(match_sky(ours_ra, dec, exp_ra[:0], dec[:0], 1.0)[0]) == 0


def test_a_list_compared_with_itself_is_perfect(catalog: Table) -> None:
    report = compare_lists(catalog, catalog)
    assert report.frames == ["4192 u", "4192 r", "6377 r"]
    for scope in [*report.frames, ALL_SCOPE]:
        figures = report.figures[scope]
        for suffix in ("all", "snr10", "snr50"):
            assert figures[f"completeness_{suffix}"] == 1.0
            assert figures[f"purity_{suffix}"] == 1.0
            assert figures[f"id_equal_{suffix}"] == 1.0
            for quantity in ("psf", "psf_raw", "sinc", "gaussian", "exp", "dev", "combo", "apcorr", "ixx", "iyy"):
                assert figures[f"{quantity}_ratio_median_{suffix}"] == pytest.approx(1.0, abs=1e-15)
                assert figures[f"{quantity}_ratio_scatter_{suffix}"] == pytest.approx(0.0, abs=1e-15)
            assert figures[f"centroid_offset_median_{suffix}"] == 0.0
            assert all(v == 1.0 for k, v in figures.items() if k.startswith("agree_"))
            assert all(v == 0 for k, v in figures.items() if k.startswith("nan_mismatch_"))
    overall = report.figures[ALL_SCOPE]
    assert overall["n_expected_all"] == len(catalog) == overall["n_matched_all"]
    assert overall["n_expected_snr10"] == int((snr(catalog) > 10).sum())
    assert overall["gaussian_ratio_n_all"] == len(catalog) - int(np.isnan(catalog["flux.gaussian"]).sum())
    assert check_gate(report, load_gate(default_gate_path())) == []


def frame_rows(table: Table, label: str) -> np.ndarray:
    """Row indices of the frame labelled `label` ('4192 r')."""
    exp_ids = np.asarray(table["id"]) >> 26
    labels = {int(e): frame_label(int(e)) for e in np.unique(exp_ids)}
    return np.flatnonzero(np.isin(exp_ids, [e for e, name in labels.items() if name == label]))


def perturb(expected: Table, drop_frame: str, shift_frame: str, n_shift: int,
            seed: int = 5) -> tuple[Table, np.ndarray, np.ndarray]:
    """Ours = expected with 5% of `drop_frame` dropped, flux.psf × 1.01, and `n_shift` rows of
    `shift_frame` moved by +2" in RA. Returns (ours, dropped row indices, shifted row indices)."""
    rng = np.random.default_rng(seed)
    drop_rows = frame_rows(expected, drop_frame)
    dropped = rng.choice(drop_rows, size=round(0.05 * len(drop_rows)), replace=False)
    shifted = isolated_rows(expected, frame_rows(expected, shift_frame))[:n_shift]
    ours = expected.copy()
    ours["flux.psf"] = ours["flux.psf"] * 1.01
    ours["coord.ra"][shifted] += 2 * ARCSEC / np.cos(np.radians(ours["coord.dec"][shifted]))
    keep = np.ones(len(ours), dtype=bool)
    keep[dropped] = False
    return ours[keep], dropped, shifted


def isolated_rows(table: Table, frame: np.ndarray) -> np.ndarray:
    """Rows of one frame with no other source of that frame within 5" (a 2" shift cannot re-match)."""
    ra, dec = np.asarray(table["coord.ra"])[frame], np.asarray(table["coord.dec"])[frame]
    isolated = []
    for k in range(len(frame)):
        distance = np.hypot((ra - ra[k]) * np.cos(np.radians(dec[k])), dec - dec[k]) / ARCSEC
        distance[k] = np.inf
        if distance.min() > 5.0:
            isolated.append(frame[k])
    return np.array(isolated, dtype=np.int64)


def check_perturbed_figures(report: CompareReport, expected: Table, ours: Table, drop_label: str,
                            shift_label: str, dropped: np.ndarray, shifted: np.ndarray) -> None:
    """Every figure must move exactly as the perturbation implies."""
    exp_snr = snr(expected)
    ours_snr = snr(ours)
    ours_shifted = np.isin(np.asarray(ours["id"]), np.asarray(expected["id"])[shifted])
    lost = np.zeros(len(expected), dtype=bool)
    lost[dropped] = True
    lost[shifted] = True
    for scope in [*report.frames, ALL_SCOPE]:
        in_scope = np.ones(len(expected), dtype=bool)
        ours_in_scope = np.ones(len(ours), dtype=bool)
        if scope != ALL_SCOPE:
            in_scope[:] = False
            in_scope[frame_rows(expected, scope)] = True
            ours_in_scope[:] = False
            ours_in_scope[frame_rows(ours, scope)] = True
        for suffix, threshold in (("all", -np.inf), ("snr10", 10.0), ("snr50", 50.0)):
            exp_in = in_scope & (exp_snr > threshold)
            ours_in = ours_in_scope & (ours_snr > threshold)
            figures = report.figures[scope]
            assert figures[f"n_expected_{suffix}"] == exp_in.sum()
            assert figures[f"n_matched_{suffix}"] == (exp_in & ~lost).sum()
            assert figures[f"completeness_{suffix}"] == pytest.approx((exp_in & ~lost).sum() / exp_in.sum())
            assert figures[f"purity_{suffix}"] == pytest.approx((ours_in & ~ours_shifted).sum() / ours_in.sum())
            for quantity in ("psf", "psf_raw"):
                assert figures[f"{quantity}_ratio_median_{suffix}"] == pytest.approx(1.01, abs=1e-12)
                assert figures[f"{quantity}_ratio_scatter_{suffix}"] == pytest.approx(0.0, abs=1e-12)
            for quantity in ("sinc", "gaussian", "apcorr", "ixx"):
                assert figures[f"{quantity}_ratio_median_{suffix}"] == 1.0
            assert figures[f"agree_badcentroid_{suffix}"] == 1.0
    assert report.figures[drop_label]["completeness_all"] < 0.96
    assert report.figures[shift_label]["purity_all"] < 1.0


def test_perturbed_copy_moves_every_figure_as_it_should(catalog: Table) -> None:
    ours, dropped, shifted = perturb(catalog, "4192 r", "6377 r", 5)
    assert len(dropped) == 15 and len(shifted) == 5
    report = compare_lists(ours, catalog)
    check_perturbed_figures(report, catalog, ours, "4192 r", "6377 r", dropped, shifted)
    overall = report.figures[ALL_SCOPE]
    assert overall["completeness_all"] == pytest.approx((900 - 15 - 5) / 900)
    assert overall["purity_all"] == pytest.approx((885 - 5) / 885)
    assert report.figures["4192 u"]["completeness_all"] == 1.0


def test_nan_patterns_offsets_and_flags_are_counted(catalog: Table) -> None:
    ours = catalog.copy()
    finite_gaussian = np.flatnonzero(np.isfinite(catalog["flux.gaussian"]))[:3]
    ours["flux.gaussian"][finite_gaussian] = np.nan
    ours["centroid.sdss.x"] += 0.1
    ours["flags.badcentroid"][:9] = ~ours["flags.badcentroid"][:9]
    ours["classification.extendedness"][:4] = 1.0 - ours["classification.extendedness"][:4]
    ours["id"][:2] += 1000
    report = compare_lists(ours, catalog)
    overall = report.figures[ALL_SCOPE]
    n = len(catalog)
    assert overall["nan_mismatch_flux_gaussian_all"] == 3
    assert overall["gaussian_ratio_n_all"] == n - int(np.isnan(catalog["flux.gaussian"]).sum()) - 3
    assert overall["nan_mismatch_flux_psf_all"] == 0
    assert overall["centroid_offset_median_all"] == pytest.approx(0.1, abs=1e-9)
    assert overall["centroid_dx_median_all"] == pytest.approx(0.1, abs=1e-9)
    assert overall["centroid_dy_median_all"] == 0.0
    assert overall["agree_badcentroid_all"] == pytest.approx(1 - 9 / n)
    assert overall["agree_extendedness_all"] == pytest.approx(1 - 4 / n)
    assert overall["id_equal_all"] == pytest.approx(1 - 2 / n)
    assert report.figures["4192 u"]["agree_badcentroid_all"] == pytest.approx(1 - 9 / 300)


def test_frame_selection(catalog: Table) -> None:
    report = compare_lists(catalog, catalog, frames=["6377 r"])
    assert report.frames == ["6377 r"]
    assert report.figure("n_expected_all") == 300 == report.figure("n_expected_all", "6377 r")
    with pytest.raises(InputError, match="4192 q"):
        compare_lists(catalog, catalog, frames=["4192 q"])


def test_text_report_is_readable_and_narrow(catalog: Table) -> None:
    text = format_report(compare_lists(catalog, catalog))
    assert "== S/N > 10" in text and "6377 r" in text and "flags.pixel.saturated.center" in text
    assert max(len(line) for line in text.splitlines()) <= 160


def test_gate_schema_and_failures(catalog: Table) -> None:
    ours, _, _ = perturb(catalog, "4192 r", "6377 r", 5)
    report = compare_lists(ours, catalog)
    bounds = parse_gate({
        "completeness_snr10_min_per_frame": 0.99,
        "psf_raw_ratio_median_snr50": [0.998, 1.002],
        "sinc_ratio_scatter_snr50_max": 0.005,
        "completeness_all_min": 0.5,
    })
    failures = check_gate(report, bounds)
    assert any(line.startswith("FAIL 4192 r: completeness_snr10 = ") for line in failures)
    assert any("FAIL all: psf_raw_ratio_median_snr50 = 1.01 " in line for line in failures)
    assert not any("4192 u" in line or "sinc" in line or "completeness_all" in line for line in failures)
    for bad, message in (({"completeness_snr10_min_per_frame": "high"}, "not a number"),
                         ({"completeness_snr10": 0.9}, "_min or _max"),
                         ({"completeness_snr10": [0.9]}, "two numbers"),
                         ({"completness_snr10_min": 0.9}, "unknown figure")):
        with pytest.raises(InputError, match=message):
            parse_gate(bad)


def test_a_nan_figure_fails_its_bound(catalog: Table) -> None:
    faint = catalog[snr(catalog) < 40]
    report = compare_lists(faint, faint)
    assert math.isnan(report.figures[ALL_SCOPE]["psf_raw_ratio_median_snr50"])
    failures = check_gate(report, parse_gate({"psf_raw_ratio_median_snr50": [0.998, 1.002]}))
    assert failures == ["FAIL all: psf_raw_ratio_median_snr50 = nan (required [0.998, 1.002]; "
                        "gate key psf_raw_ratio_median_snr50)"]


def _bright_rows(table: Table, label: str, fraction: float) -> np.ndarray:
    """`fraction` of the S/N > 50 rows of frame `label` (at least one)."""
    rows = frame_rows(table, label)
    rows = rows[snr(table)[rows] > 50]
    return rows[: max(1, round(fraction * len(rows)))]


def _scaled(column: str, factor: float) -> Callable[[Table], Table]:
    def perturb(table: Table) -> Table:
        table[column] = table[column] * factor
        return table
    return perturb


def _jittered(column: str, sigma: float) -> Callable[[Table], Table]:
    def perturb(table: Table) -> Table:
        table[column] = table[column] * (1.0 + np.random.default_rng(11).normal(0.0, sigma, len(table)))
        return table
    return perturb


def _flipped(column: str) -> Callable[[Table], Table]:
    def perturb(table: Table) -> Table:  # 2 % of the rows
        table[column][::50] = ~table[column][::50]
        return table
    return perturb


def _dropped(table: Table) -> Table:  # 3 % of the bright sources of 4192 r lost
    keep = np.ones(len(table), dtype=bool)
    keep[_bright_rows(table, "4192 r", 0.03)] = False
    return table[keep]


def _spurious(table: Table) -> Table:  # 3 % of the bright sources of 6377 r doubled 3" away
    extra = table[_bright_rows(table, "6377 r", 0.03)]
    extra["coord.ra"] += 3 * ARCSEC / np.cos(np.radians(extra["coord.dec"]))
    extra["id"] += 100_000
    return vstack([table, extra])


def _shifted(table: Table) -> Table:
    table["centroid.sdss.x"] = table["centroid.sdss.x"] + 0.02
    return table


# one regression of each kind the default gate guards against, and the gate key that must catch it
REGRESSIONS = {
    "lost sources": (_dropped, "completeness_snr10_min_per_frame"),
    "spurious sources": (_spurious, "purity_snr10_min_per_frame"),
    "flux.psf 0.3 % high": (_scaled("flux.psf", 1.003), "psf_raw_ratio_median_snr50"),
    "flux.psf 1 % noise": (_jittered("flux.psf", 0.01), "psf_raw_ratio_scatter_snr50_max"),
    "flux.sinc 0.3 % low": (_scaled("flux.sinc", 0.997), "sinc_ratio_median_snr50"),
    "flux.sinc 1 % noise": (_jittered("flux.sinc", 0.01), "sinc_ratio_scatter_snr50_max"),
    "ixx 1 % noise": (_jittered("shape.sdss.ixx", 0.01), "ixx_ratio_scatter_snr50_max"),
    "iyy 1 % noise": (_jittered("shape.sdss.iyy", 0.01), "iyy_ratio_scatter_snr50_max"),
    "centroids 0.02 px off": (_shifted, "centroid_offset_median_snr50_max"),
    **{f"{flag} flipped": (_flipped(f"flags.{flag}"), f"agree_{flag.removeprefix('pixel.').replace('.', '_')}_all_min")
       for flag in ("badcentroid", "pixel.edge", "pixel.interpolated.any", "pixel.interpolated.center",
                    "pixel.saturated.any", "pixel.saturated.center")},
}


@pytest.mark.parametrize("regression", list(REGRESSIONS))
def test_the_default_gate_fails_each_kind_of_regression(catalog: Table, regression: str) -> None:
    perturb, key = REGRESSIONS[regression]
    gate = load_gate(default_gate_path())
    assert check_gate(compare_lists(catalog, catalog), gate) == []
    failures = check_gate(compare_lists(perturb(catalog.copy()), catalog), gate)
    assert any(line.endswith(f"gate key {key})") for line in failures), failures


def write(table: Table, path: Path) -> Path:
    with path.open("w") as stream:
        write_list(table, stream)
    return path


def test_cli_exit_codes_json_and_gate(catalog: Table, tmp_path: Path) -> None:
    expected = write(catalog, tmp_path / "expected.txt")
    ours_table, _, _ = perturb(catalog, "4192 r", "6377 r", 5)
    ours = write(ours_table, tmp_path / "ours.txt")
    runner = CliRunner()

    same = runner.invoke(main, [str(expected), str(expected), "--gate", "default",
                                "--json", str(tmp_path / "same.json")])
    assert same.exit_code == 0, same.output
    assert "0 failing" in same.output
    figures = json.loads((tmp_path / "same.json").read_text())["figures"]
    assert figures["all"]["completeness_snr10"] == 1.0 and set(figures) == {"all", "4192 u", "4192 r", "6377 r"}

    worse = runner.invoke(main, [str(ours), str(expected), "--gate", str(default_gate_path())])
    assert worse.exit_code == 1
    assert "FAIL all: psf_raw_ratio_median_snr50 = 1.01" in worse.output
    assert "FAIL 4192 r: completeness_snr10" in worse.output

    only_u = runner.invoke(main, [str(ours), str(expected), "--frame", "4192 u", "--gate", "default"])
    assert only_u.exit_code == 1
    assert "4192 r" not in only_u.output.split("== gate")[1]

    missing = runner.invoke(main, [str(tmp_path / "absent.txt"), str(expected)])
    assert missing.exit_code == InputError.exit_code
    assert "absent.txt" in missing.output

    bad_gate = tmp_path / "gate.yaml"
    bad_gate.write_text("purity_snr10: 0.9\n")
    assert runner.invoke(main, [str(expected), str(expected), "--gate", str(bad_gate)]).exit_code == 3


@pytest.mark.slow
def test_expected_list_against_itself_and_a_perturbed_copy(demo_dir: Path) -> None:
    expected = read_list(demo_dir / "detected-sources.txt.expected")
    report = compare_lists(expected, expected)
    assert report.frames == ["4192 u", "6377 u", "4192 g", "6377 g", "4192 r", "6377 r",
                             "4192 i", "6377 i", "4192 z", "6377 z"]
    overall = report.figures[ALL_SCOPE]
    assert overall["n_expected_all"] == 4274 and overall["completeness_all"] == 1.0
    assert overall["psf_raw_ratio_scatter_snr50"] == 0.0
    assert all(overall[f"nan_mismatch_{c.replace('.', '_')}_all"] == 0 for c in FLOAT_COLUMNS)
    assert check_gate(report, load_gate(default_gate_path())) == []

    ours, dropped, shifted = perturb(expected, "4192 r", "6377 i", 4)
    assert len(dropped) == 29 and len(shifted) == 4
    report = compare_lists(ours, expected)
    check_perturbed_figures(report, expected, ours, "4192 r", "6377 i", dropped, shifted)
    assert max(len(line) for line in format_report(report).splitlines()) <= 160


def test_a_gate_extends_another_gate_and_replaces_its_entries(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("completeness_all_min: 0.9\npurity_all_min: 0.8\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "small.yaml").write_text("extends: ../base.yaml\npurity_all_min: 0.7\n"
                                                 "psf_ratio_median_snr50: [0.99, 1.01]\n")
    bounds = {bound.key: bound for bound in load_gate(tmp_path / "sub" / "small.yaml")}
    assert sorted(bounds) == ["completeness_all_min", "psf_ratio_median_snr50", "purity_all_min"]
    assert bounds["completeness_all_min"].lower == 0.9 and bounds["purity_all_min"].lower == 0.7
    assert (bounds["psf_ratio_median_snr50"].lower, bounds["psf_ratio_median_snr50"].upper) == (0.99, 1.01)


@pytest.mark.parametrize("extends, message", [("", "expected the path of another gate file"),
                                              ("missing.yaml", "missing.yaml: cannot read the gate file"),
                                              ("loop.yaml", "more than 8 levels")])
def test_a_bad_extends_is_one_error_naming_the_file(tmp_path: Path, extends: str, message: str) -> None:
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\ncompleteness_all_min: 0.9\n")
    gate = tmp_path / "gate.yaml"
    gate.write_text(f"extends: {extends!r}\ncompleteness_all_min: 0.9\n")
    with pytest.raises(InputError, match=re.escape(message)):
        load_gate(gate)


def test_the_small_demo_gate_is_the_full_gate_with_one_pooled_bound_measured_on_its_frames() -> None:
    full = {bound.key: bound for bound in load_gate(default_gate_path())}
    small = {bound.key: bound for bound in load_gate(default_gate_path().with_name("compare-gate-small.yaml"))}
    assert set(small) == set(full)
    changed = sorted(key for key in full if small[key] != full[key])
    assert changed == ["exp_ratio_median_all"]
    assert all(small[key].lower < full[key].lower for key in changed)
