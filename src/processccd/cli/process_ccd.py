"""`process-ccd INPUT --id ... --output OUTPUT`: run ProcessCcd on every data id."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from processccd.cli.args import join_id_tokens
from processccd.errors import DataIdError, ProcessCcdError


def configure_logging(verbose: bool) -> None:
    """LSST-style task log lines on stderr: `processCcd.calibrate.detection: Detected ...`."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(name)s: %(message)s",
                        stream=sys.stderr, force=True)
    for noisy in ("astropy", "matplotlib", "distributed", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_repo", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--id", "id_expressions", multiple=True, metavar="'KEY=V1^V2 ...'",
              help="Data id expression, e.g. 'run=4192 filter=u^g camcol=4 field=300' (repeatable).")
@click.option("--output", "output_repo", required=True, type=click.Path(path_type=Path),
              help="Output repository.")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.option("-v", "--verbose", is_flag=True, help="Debug-level logging.")
def command(input_repo: Path, id_expressions: tuple[str, ...], output_repo: Path, debug: bool,
         verbose: bool) -> None:
    """Process SDSS frames of the INPUT repository into calibrated exposures and source catalogues."""
    from processccd.butler import Butler
    from processccd.dataid import parse_id_expression
    from processccd.tasks.process_ccd import ProcessCcdTask

    configure_logging(verbose)
    log = logging.getLogger("processCcd")
    if not id_expressions:
        click.echo("process-ccd: error: at least one --id is required", err=True)
        sys.exit(2)
    try:
        expressions = [parse_id_expression(e) for e in id_expressions]
    except DataIdError as err:
        click.echo(f"process-ccd: error: {err}", err=True)
        sys.exit(err.exit_code)

    butler = Butler(input_repo, output_repo)
    failures: list[ProcessCcdError] = []
    data_ids = []
    try:
        butler.record_output_repository()
        for values in expressions:
            try:
                data_ids.extend(butler.resolve(values))
            except DataIdError as err:
                log.error("error: %s", err)
                failures.append(err)
    except ProcessCcdError as err:
        click.echo(f"process-ccd: error: {err}", err=True)
        sys.exit(err.exit_code)

    task = ProcessCcdTask(butler)
    for data_id in dict.fromkeys(data_ids):
        try:
            task.run(data_id)
        except ProcessCcdError as err:
            log.error("error: data id %s: %s", data_id, err)
            if debug:
                log.exception("traceback")
            failures.append(err)
        except Exception as err:  # a bug must not stop the other data ids; --debug shows where
            log.error("error: data id %s: unexpected %s: %s", data_id, type(err).__name__, err)
            if debug:
                log.exception("traceback")
            failures.append(ProcessCcdError(str(err)))
    if failures:
        sys.exit(2 if any(isinstance(f, DataIdError) for f in failures) else failures[0].exit_code)


def main() -> None:
    """Console-script entry point of `process-ccd`."""
    command.main(args=join_id_tokens(sys.argv[1:]), prog_name="process-ccd")
