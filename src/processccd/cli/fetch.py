"""`fetch-demo-data`: fill a directory with the SDSS demo data set and verify its checksums."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from processccd.errors import ProcessCcdError
from processccd.fetch import default_mirror, fetch_demo_data


@click.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--mirror", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Local copy of the data set (default: ../shared/sdss-demo beside DEST).")
def main(dest: Path, mirror: Path | None) -> None:
    """Fetch input/, astrometry_net_data/ and detected-sources.txt.expected into DEST."""
    dest = dest.resolve()
    try:
        installed = fetch_demo_data(dest, mirror or default_mirror(dest))
    except ProcessCcdError as err:
        click.echo(f"fetch-demo-data: error: {err}", err=True)
        sys.exit(err.exit_code)
    if installed:
        click.echo(f"fetch-demo-data: installed {len(installed)} files into {dest}", err=True)
    else:
        click.echo(f"fetch-demo-data: all demo files present and verified in {dest}", err=True)
