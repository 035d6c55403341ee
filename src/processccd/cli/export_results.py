"""`export-results OUTPUT`: print the 40-column detected-sources list of the src catalogues in OUTPUT."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from processccd.cli.args import join_id_tokens
from processccd.errors import DataIdError, ProcessCcdError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("output_repo", metavar="OUTPUT", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--id", "id_expressions", multiple=True, metavar="'KEY=V1^V2 ...'",
              help="Only these data ids (default: every src catalogue in OUTPUT).")
@click.option("--schema", type=click.Choice(["2013", "2020"]), default="2013", show_default=True,
              help="2013: the 40-column list of the 2013 demo; 2020: LSST meas_base names, every measured column "
                   "the src tables have (parents and deblended children).")
def command(output_repo: Path, id_expressions: tuple[str, ...], schema: str) -> None:
    """Frames in the order filter u, g, r, i, z, then run, camcol, field; sources in id order."""
    import numpy as np

    from processccd.butler import Butler
    from processccd.dataid import FILTERS, parse_id_expression
    from processccd.schema2020 import exported_columns, write_list_2020
    from processccd.source_list import COLUMNS, write_list
    from processccd.table import read_source_columns, source_column_names

    butler = Butler(output_repo, output_repo)
    data_ids = butler.discover_outputs("src")
    try:
        selections = [parse_id_expression(e) for e in id_expressions]
    except DataIdError as err:
        click.echo(f"export-results: error: {err}", err=True)
        sys.exit(err.exit_code)
    if selections:
        data_ids = [d for d in data_ids
                    if any(all(getattr(d, k) in v for k, v in sel.items() if k != "rerun") for sel in selections)]
    if not data_ids:
        click.echo(f"export-results: error: no src catalogue found in {output_repo}", err=True)
        sys.exit(2)
    data_ids.sort(key=lambda d: (FILTERS.index(d.filter), d.run, d.camcol, d.field))
    try:
        frames = []
        for data_id in data_ids:
            path = butler.path("src", data_id)
            try:
                names = COLUMNS if schema == "2013" else tuple(exported_columns(source_column_names(path)))
                columns = read_source_columns(path, names)
            except (OSError, ValueError) as err:
                raise ProcessCcdError(f"{path}: unreadable src catalogue ({err})") from err
            order = np.argsort(columns["id"], kind="stable")
            frames.append({name: values[order] for name, values in columns.items()})
        names = tuple(frames[0])
        if any(tuple(frame) != names for frame in frames):
            raise ProcessCcdError("the src catalogues have different columns (made with different configurations)")
        merged = {name: np.concatenate([frame[name] for frame in frames]) for name in names}
        (write_list if schema == "2013" else write_list_2020)(merged, sys.stdout)
    except ProcessCcdError as err:
        click.echo(f"export-results: error: {err}", err=True)
        sys.exit(err.exit_code)


def main() -> None:
    """Console-script entry point of `export-results`."""
    command.main(args=join_id_tokens(sys.argv[1:]), prog_name="export-results")
