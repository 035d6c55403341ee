"""`compare-results`: compare a detected-sources list with the expected one, optionally against a gate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from processccd.comparison import compare_lists
from processccd.errors import OutputError, ProcessCcdError
from processccd.gate import check_gate, default_gate_path, load_gate
from processccd.schema2020 import read_list_any
from processccd.text_report import format_report


@click.command()
@click.argument("ours", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("expected", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every figure to this JSON file.")
@click.option("--gate", "gate_spec", default=None, metavar="FILE",
              help="YAML thresholds (figure_min / figure_max / figure: [lo, hi], optional _per_frame); "
                   "'default' = the packaged configs/compare-gate.yaml. Exit status 1 if any fails.")
@click.option("--frame", "frames", multiple=True, metavar="'RUN FILTER'",
              help="Only compare this frame, e.g. --frame '4192 u' (repeatable).")
@click.option("--radius", "radius_arcsec", type=click.FloatRange(min=0.0, min_open=True), default=1.0,
              show_default=True, help="Match radius in arcsec.")
def main(ours: Path, expected: Path, json_path: Path | None, gate_spec: str | None,
         frames: tuple[str, ...], radius_arcsec: float) -> None:
    """Match OURS to EXPECTED per frame by sky position and print completeness, purity and agreement.

    Either list may be of the 2013 schema (40 columns) or the 2020 one (export-results --schema 2020)."""
    try:
        bounds = []
        if gate_spec:
            bounds = load_gate(default_gate_path() if gate_spec == "default" else Path(gate_spec))
        report = compare_lists(read_list_any(ours), read_list_any(expected), radius_arcsec, frames or None)
        click.echo(format_report(report), nl=False)
        if json_path is not None:
            try:
                json_path.write_text(json.dumps(report.to_json_dict(), indent=1) + "\n")
            except OSError as err:
                raise OutputError(f"{json_path}: cannot write ({err})") from err
    except ProcessCcdError as err:
        click.echo(f"compare-results: error: {err}", err=True)
        sys.exit(err.exit_code)
    if bounds:
        failures = check_gate(report, bounds)
        click.echo("")
        click.echo(f"== gate: {len(bounds)} bounds, {len(failures)} failing")
        for line in failures:
            click.echo(line)
        if failures:
            sys.exit(1)
