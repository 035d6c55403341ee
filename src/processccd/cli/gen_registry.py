"""`gen-registry INPUT`: write INPUT/registry.sqlite3 (and INPUT/_mapper) from the fpC headers, as LSST's
genInputRegistry did; `process-ccd` then expands partial data ids with it."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

from processccd.errors import InputError, ProcessCcdError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_repo", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--update", is_flag=True,
              help="Keep the rows of the existing registry for the frames still present; read only new headers.")
def command(input_repo: Path, update: bool) -> None:
    """Build the input registry of INPUT: one row of table raw per fpC file under <run>/<rerun>/corr/."""
    from processccd.gen_registry import gen_registry
    from processccd.logs import configure_task_logging

    configure_task_logging(logging.INFO)
    start = time.perf_counter()
    try:
        result = gen_registry(input_repo, update=update)
    except ProcessCcdError as err:
        click.echo(f"gen-registry: error: {err}", err=True)
        sys.exit(err.exit_code)
    for err in result.errors:
        click.echo(f"gen-registry: error: {err}", err=True)
    click.echo(f"gen-registry: wrote {result.path}: {result.frames} frames ({result.headers_read} headers read) "
               f"in {time.perf_counter() - start:.2f} s", err=True)
    if result.errors:
        click.echo(f"gen-registry: {len(result.errors)} frames left out of the registry (errors above)", err=True)
        sys.exit(InputError.exit_code)


def main() -> None:
    """Console-script entry point of `gen-registry`."""
    command.main(prog_name="gen-registry")
