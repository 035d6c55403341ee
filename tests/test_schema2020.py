"""The 2020 (meas_base) schema: names, conversions, and reading it back as the 2013 columns."""

from __future__ import annotations

import io

import numpy as np

from processccd.schema2020 import base_name, read_list_any, write_list_2020
from processccd.source_list import COLUMNS, read_list, write_list


def columns(n: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    cols: dict[str, np.ndarray] = {}
    for name in COLUMNS:
        if name == "id":
            cols[name] = (np.int64(4192) << 26) + np.arange(1, n + 1)
        elif name.startswith("flags.") or name == "shape.sdss.flags":
            cols[name] = rng.uniform(size=n) > 0.5
        elif name.startswith(("centroid.sdss.err.", "shape.sdss.err.")):
            cols[name] = rng.uniform(0.01, 2.0, n).astype(np.float32)
        else:
            cols[name] = rng.uniform(-10, 1000, n)
    cols["parent"] = np.array([0, 0, cols["id"][1]])
    cols["deblend.nchild"] = np.array([0, 1, 0], dtype=np.int32)
    cols["flux.circular.4_5"] = np.array([1.5, 2.5, np.nan])
    cols["flux.circular.12_0"] = np.array([3.0, 4.0, 5.0])
    cols["flux.circular.12_0.flags.offimage"] = np.array([False, True, False])
    return cols


def test_meas_base_names_and_errors_as_standard_deviations():
    cols = columns()
    stream = io.StringIO()
    write_list_2020(cols, stream)
    lines = stream.getvalue().splitlines()
    header = lines[0].lstrip("#").split()
    for name in ("base_SdssCentroid_x", "base_PsfFlux_instFlux", "base_CircularApertureFlux_12_0_instFlux",
                 "base_ClassificationExtendedness_value", "deblend_nChild", "parent",
                 "base_CircularApertureFlux_12_0_flag_apertureTruncated"):
        assert name in header
    # circular apertures by radius: 4.5 before 12
    radii = [header.index(f"base_CircularApertureFlux_{r}_instFlux") for r in ("4_5", "12_0")]
    assert radii[0] < radii[1]
    row = dict(zip(header, lines[1].split(), strict=True))
    assert float(row["base_SdssCentroid_xErr"]) == float(f"{np.sqrt(np.float64(cols['centroid.sdss.err.xx'][0])):.12g}")
    assert int(row["id"]) == cols["id"][0] and row["parent"] == "0"
    assert base_name("flux.circular.4_5.flags.masked") == ("base_CircularApertureFlux_4_5_flag_badPixel", "")


def test_a_2020_list_reads_back_as_the_2013_columns(tmp_path):
    cols = columns()
    path_2020, path_2013 = tmp_path / "a.txt", tmp_path / "b.txt"
    with open(path_2020, "w") as stream:
        write_list_2020(cols, stream)
    with open(path_2013, "w") as stream:
        write_list(cols, stream)
    new, old = read_list_any(path_2020), read_list(path_2013)
    assert read_list_any(path_2013).colnames == old.colnames
    for name in COLUMNS:
        if name.startswith(("centroid.gaussian.err",)):
            continue  # written from its variance like the others, NaN in neither list here
        if old[name].dtype.kind == "f":
            np.testing.assert_allclose(np.asarray(new[name], float), np.asarray(old[name], float), rtol=2e-6)
        else:
            np.testing.assert_array_equal(new[name], old[name])
    np.testing.assert_array_equal(new["parent"], cols["parent"])
    np.testing.assert_array_equal(new["deblend.nchild"], cols["deblend.nchild"])
