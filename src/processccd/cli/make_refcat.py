"""`make-refcat TABLE... --output stars.fits`: a reference catalogue for any SDSS field (issue 13).

`make-refcat --print-sql fpC-...fit.gz` prints the SkyServer/CasJobs query of the stars over that frame.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from processccd.errors import InputError, ProcessCcdError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("tables", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Catalogue to write (FITS, the layout of astrometry_net_data/stars.fits).")
@click.option("--all-types", is_flag=True,
              help="Keep rows whose type column is not 6 (star); starnotgal then tells them apart.")
@click.option("--print-sql", "fpc_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Print the DR7 query of the stars over this fpC frame (repeatable) and exit.")
@click.option("--margin", default=1.0, show_default=True, help="Margin around the frames for --print-sql [arcmin].")
def command(tables: tuple[Path, ...], output: Path | None, all_types: bool, fpc_files: tuple[Path, ...],
            margin: float) -> None:
    """Build a reference catalogue from CSV or FITS TABLES of SDSS stars (objID, ra, dec, psfMag_u..z,
    psfMagErr_u..z; or the stars.fits names sdssid, ra, dec, u..z, u_err..z_err and optionally id)."""
    from processccd.refcat_build import build_refcat, footprint_box, skyserver_sql, write_refcat

    try:
        if fpc_files:
            from astropy.io import fits

            for path in fpc_files:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        box = footprint_box(fits.getheader(path), margin)
                except (OSError, ValueError, KeyError) as err:
                    raise InputError(f"{path}: cannot read the fpC header WCS ({err})") from err
                click.echo(f"-- stars over {path.name} (+{margin:g} arcmin)\n{skyserver_sql(*box)}\n")
            return
        if not tables or output is None:
            raise InputError("give the input TABLE(s) and --output FILE (or --print-sql FPC)")
        catalogue, summary = build_refcat(tables, all_types)
        if summary.n_rows == 0:
            raise InputError(f"{', '.join(map(str, tables))}: no star in the input table(s)")
        write_refcat(catalogue, output, tables)
    except ProcessCcdError as err:
        click.echo(f"make-refcat: error: {err}", err=True)
        sys.exit(err.exit_code)
    click.echo(f"make-refcat: wrote {summary.n_rows} objects to {output} (read {summary.n_read}; "
               f"{summary.n_not_star} not stars{' kept' if all_types else ' dropped'}, {summary.n_duplicate} "
               f"duplicate objIDs dropped); RA {summary.ra_range[0]:.4f}..{summary.ra_range[1]:.4f}, "
               f"Dec {summary.dec_range[0]:.4f}..{summary.dec_range[1]:.4f}", err=True)


def main() -> None:
    """Console-script entry point of `make-refcat`."""
    command.main(prog_name="make-refcat")
