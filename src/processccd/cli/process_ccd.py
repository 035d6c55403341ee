"""`process-ccd INPUT --id ... --output OUTPUT`: run ProcessCcd on every data id.

Frames are independent jobs run in this process (`-j 1`), in a local process pool (`-j N`, default the
number of cores) or on a Dask cluster (`--scheduler tcp://HOST:PORT`). Exit status: 0 if every data id
succeeded, else the exit code of the first failure (processccd.errors), 130 when interrupted.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from processccd.cli.args import join_id_tokens
from processccd.errors import DataIdError, MissingExtraError, OutputError, ProcessCcdError
from processccd.logs import configure_task_logging

EXIT_INTERRUPTED = 130
RUN_LOGGER = "processCcd.run"
KERNELS_LOGGER = "processCcd.kernels"  # its INFO line (compiling the kernels once) shows with a progress bar too
CONFIG_RECORD = Path("config") / "processCcd.yaml"
SUMMARY_HEADER = ("data id", "status", "src", "icSrc", "matches", "zero point", "apCorr", "seconds")
OPTION_EXTRAS = {"--scheduler": ("dask", "distributed"), "--qa": ("qa", "matplotlib")}  # option: (extra, module)


class _ProgressFilter(logging.Filter):
    """With a progress bar, show only the run's own lines and warnings/errors of the tasks."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name in (RUN_LOGGER, KERNELS_LOGGER)


def configure_logging(verbose: bool, progress_bar: bool = False) -> None:
    """LSST-style task log lines on stderr: `processCcd.calibrate.detection: Detected ...`."""
    configure_task_logging(logging.DEBUG if verbose else logging.INFO)
    if progress_bar and not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_ProgressFilter())
    for noisy in ("matplotlib", "distributed", "asyncio", "tornado", "bokeh"):  # not astropy: its own Logger class
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(err: ProcessCcdError, debug: bool, detail: list[str] | None = None) -> None:
    """One error line (plus optional indented detail lines, and the traceback with --debug); exit."""
    click.echo(f"process-ccd: error: {err}", err=True)
    for line in detail or []:
        click.echo(f"    {line}", err=True)
    if debug:
        import traceback

        click.echo("".join(traceback.format_exception(err)).rstrip(), err=True)
    sys.exit(err.exit_code)


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_repo", metavar="INPUT", required=False, type=click.Path(path_type=Path))
@click.option("--id", "id_expressions", multiple=True, metavar="'KEY=V1^V2 ...'",
              help="Data id expression, e.g. 'run=4192 filter=u^g camcol=4 field=300' (repeatable).")
@click.option("--output", "output_repo", type=click.Path(path_type=Path), help="Output repository.")
@click.option("-j", "--processes", type=int, default=None,
              help="Local worker processes (default: the number of cores; 1 = serial, in this process).")
@click.option("--scheduler", metavar="tcp://HOST:PORT",
              help="Run on this Dask (dask.distributed) scheduler instead of local processes.")
@click.option("--config", "config_overrides", multiple=True, metavar="KEY.SUB=VALUE",
              help="Override one config value (YAML-typed), e.g. detection.threshold=4.5 (repeatable).")
@click.option("--config-file", "config_files", multiple=True, type=click.Path(path_type=Path),
              help="YAML file of config overrides (repeatable; applied before --config).")
@click.option("--refcat", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference catalogue (stars.fits layout, see make-refcat); sets calibrate.reference_catalog.path.")
@click.option("--show-config", is_flag=True, help="Print the configuration in force and exit.")
@click.option("--show-ids", is_flag=True,
              help="Print the data ids the --id expressions expand to, and where they came from "
                   "(the input registry or a directory scan), and exit.")
@click.option("--warm-up", is_flag=True,
              help="Compile (or load) and cache the measurement kernels without processing data, then exit.")
@click.option("--clobber-config", is_flag=True,
              help="Accept a config that differs from the one recorded in the output repository.")
@click.option("--clobber-output", is_flag=True, help="Reprocess data ids that an earlier run completed.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first data id that fails.")
@click.option("--qa", is_flag=True, help="Write quick-look PNGs and qa/index.html into the output repository.")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.option("-v", "--verbose", is_flag=True, help="Debug-level logging.")
def command(input_repo: Path | None, id_expressions: tuple[str, ...], output_repo: Path | None,
            processes: int | None, scheduler: str | None, config_overrides: tuple[str, ...],
            config_files: tuple[Path, ...], refcat: Path | None, show_config: bool, show_ids: bool, warm_up: bool,
            clobber_config: bool, clobber_output: bool, fail_fast: bool, qa: bool, debug: bool, verbose: bool) -> None:
    """Process SDSS frames of the INPUT repository into calibrated exposures and source catalogues."""
    if warm_up:
        configure_logging(verbose)
        warm_up_kernels()
        return
    try:
        check_extras({"--scheduler": scheduler is not None, "--qa": qa})
    except MissingExtraError as err:
        fail(err, debug)
    if not show_config and not show_ids and scheduler is None and (processes or os.cpu_count() or 1) > 1:
        from processccd.parallel import start_worker_server

        start_worker_server()  # the worker processes' imports overlap with this process's set-up
    from processccd.config import ConfigError, dump_config, load_config

    progress_bar = sys.stderr.isatty()
    configure_logging(verbose, progress_bar)
    if refcat is not None:  # absolute, so that workers with another working directory find it
        config_overrides = (*config_overrides, f"calibrate.reference_catalog.path={json.dumps(str(refcat.resolve()))}")
    try:
        config = load_config(config_files, config_overrides)
    except ConfigError as err:
        fail(err, debug)
    if show_config:
        click.echo(dump_config(config, documented=True), nl=False)
        return
    if input_repo is None:
        fail(DataIdError("missing INPUT repository argument"), debug)
    if output_repo is None and not show_ids:
        fail(DataIdError("--output is required"), debug)
    if not id_expressions:
        fail(DataIdError("at least one --id is required"), debug)
    if processes is not None and processes < 1:
        fail(DataIdError(f"-j/--processes must be at least 1, not {processes}"), debug)
    from processccd.dataid import parse_id_expression

    try:
        expressions = [parse_id_expression(e) for e in id_expressions]
    except DataIdError as err:
        fail(err, debug)
    if show_ids:
        sys.exit(print_ids(input_repo, id_expressions, expressions, debug))
    exit_code = run(input_repo, output_repo, expressions, config, processes=processes, scheduler=scheduler,
                    clobber_config=clobber_config, clobber_output=clobber_output, fail_fast=fail_fast, qa=qa,
                    debug=debug, progress_bar=progress_bar)
    if exit_code:
        sys.exit(exit_code)


def check_extras(options: dict[str, bool]) -> None:
    """Raise MissingExtraError for the first option given whose optional dependency is not installed."""
    for option in (option for option, given in options.items() if given):
        extra, module = OPTION_EXTRAS[option]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken installation, or a module without a spec
            found = False
        if not found:
            raise MissingExtraError(f"{option} needs {module}, which is not installed: "
                                    f"pip install 'processccd[{extra}]'")


def warm_up_kernels() -> None:
    """`--warm-up`: prepare the compiled kernels (compiling those numba's cache lacks) and say where they are."""
    from processccd.compiled_kernels import prepare_kernels
    from processccd.kernel_cache import cache_root

    report = prepare_kernels()
    logging.getLogger(KERNELS_LOGGER).info(
        "%d kernel specialisations ready in %.1f s: %d compiled, %d loaded from the cache (%s)",
        report.loaded + report.compiled, report.seconds, report.compiled, report.loaded, cache_root())


def run(input_repo: Path, output_repo: Path, expressions: list[dict[str, list[int | str]]], config: Any, *,
        processes: int | None, scheduler: str | None, clobber_config: bool, clobber_output: bool,
        fail_fast: bool, qa: bool, debug: bool, progress_bar: bool) -> int:
    """Resolve the ids, lock the output, check the config, run every frame; return the exit status."""
    from processccd.butler import Butler, OutputLock

    log = logging.getLogger(RUN_LOGGER)
    butler = Butler(input_repo, output_repo)
    id_failures: list[DataIdError] = []
    data_ids = []
    try:
        for values in expressions:
            try:
                data_ids.extend(butler.resolve(values))
            except DataIdError as err:
                log.error("error: %s", err)
                id_failures.append(err)
    except ProcessCcdError as err:
        fail(err, debug)
    data_ids = list(dict.fromkeys(data_ids))
    if not data_ids:
        return 2 if id_failures else 0

    lock = OutputLock(output_repo)
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers need it
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    try:
        output_repo.mkdir(parents=True, exist_ok=True)
        lock.acquire()
        butler.record_output_repository()
        record_config(output_repo, config, clobber_config)
        for path in butler.remove_temporaries():
            log.info("removed %s left by an interrupted run", path)
        frames, interrupted = execute(butler, data_ids, config, processes=processes, scheduler=scheduler,
                                      clobber_output=clobber_output, fail_fast=fail_fast, qa=qa, debug=debug,
                                      progress_bar=progress_bar)
    except ProcessCcdError as err:
        fail(err, debug, getattr(err, "detail", None))
    except OSError as err:
        fail(OutputError(f"{output_repo}: {err.strerror or err}"), debug)
    finally:
        lock.release()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_handler)

    rows = summary_rows(data_ids, frames)
    click.echo(format_table(SUMMARY_HEADER, rows))
    if qa:
        from processccd.qa import write_index

        pngs = [frames[d].qa_png if d in frames else None for d in data_ids]
        index = write_index(output_repo, SUMMARY_HEADER, rows, pngs)
        log.info("QA index: %s", index)
    failed = [frames[d] for d in data_ids if d in frames and not frames[d].succeeded]
    not_run = len(data_ids) - len(frames)
    if failed or not_run:
        log.info("%d of %d data ids failed%s", len(failed), len(data_ids),
                 f", {not_run} not run" if not_run else "")
    if interrupted:
        log.warning("interrupted: rerun the same command to process the remaining data ids")
        return EXIT_INTERRUPTED
    if id_failures:
        return 2
    if failed:
        return failed[0].exit_code or 1
    return 1 if not_run else 0


def print_ids(input_repo: Path, texts: tuple[str, ...], expressions: list[dict[str, list[int | str]]],
              debug: bool) -> int:
    """`--show-ids`: per expression, a `# --id ...: N data ids from <source>` line and the ids; the exit status."""
    from processccd.butler import Butler

    butler = Butler(input_repo)
    status = 0
    for text, values in zip(texts, expressions, strict=True):
        try:
            data_ids = butler.resolve(values)
        except DataIdError as err:
            logging.getLogger(RUN_LOGGER).error("error: %s", err)
            status = err.exit_code
            continue
        except ProcessCcdError as err:
            fail(err, debug)
        click.echo(f"# --id {text}: {len(data_ids)} data ids from {butler.id_source}")
        for data_id in data_ids:
            click.echo(str(data_id))
    return status


def record_config(output_repo: Path, config: Any, clobber_config: bool) -> None:
    """Write the config in force to <output>/config/processCcd.yaml; refuse a different one unless clobbering."""
    from processccd.butler import atomic_path
    from processccd.config import ConfigError, config_diff, config_to_dict, dump_config, read_config_file

    path = output_repo / CONFIG_RECORD
    if path.is_file():
        diff = config_diff(read_config_file(path), config_to_dict(config))
        if not diff:
            return
        if not clobber_config:
            raise ConfigError(f"{path}: the config differs from the one this output repository was made with "
                              f"({len(diff)} values: recorded -> now); use --clobber-config to replace it", diff)
    with atomic_path(path) as tmp:
        tmp.write_text(dump_config(config))


def execute(butler: Any, data_ids: list[Any], config: Any, *, processes: int | None, scheduler: str | None,
            clobber_output: bool, fail_fast: bool, qa: bool, debug: bool, progress_bar: bool
            ) -> tuple[dict[Any, Any], bool]:
    """Run every data id on the chosen executor; return {data id: FrameSummary} and whether interrupted."""
    from processccd.parallel import make_executor, make_jobs

    log = logging.getLogger(RUN_LOGGER)
    worker_log_level = logging.WARNING if progress_bar else logging.getLogger().getEffectiveLevel()
    jobs = make_jobs(butler.input_root, butler.output_root, data_ids, config, clobber_output=clobber_output,
                     qa=qa, log_level=worker_log_level)
    executor = make_executor(processes, scheduler, len(jobs), worker_log_level)
    workers = getattr(executor, "n_workers", 1)
    log.info("Processing %d data ids with the %s executor (%s workers)", len(jobs), executor.name, workers)
    frames: dict[Any, Any] = {}
    bar = _progress_bar(len(jobs)) if progress_bar else None
    interrupted = False
    try:
        for summary in executor.run(jobs):
            frames[summary.data_id] = summary
            _report(log, summary, len(frames), len(jobs), debug, quiet=bar is not None)
            if bar is not None:
                bar.update(1)
            if fail_fast and not summary.succeeded and len(frames) < len(jobs):
                log.info("--fail-fast: not starting the remaining data ids")
                executor.cancel()
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted: finishing the frames in progress, starting no more")
        executor.cancel()
    finally:
        if bar is not None:
            bar.close()
        executor.close()
    if interrupted and executor.name == "serial":
        # The interrupt was raised in this process, maybe between the creation of a product's temporary file and
        # the guard that removes it. No frame runs now (pool workers ignore SIGINT and finish theirs), and the
        # output lock is held.
        for path in butler.remove_temporaries():
            log.info("removed %s left by the interrupted frame", path)
    return frames, interrupted


def _progress_bar(total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True)


def _report(log: logging.Logger, summary: Any, done: int, total: int, debug: bool, quiet: bool) -> None:
    """One line per finished data id (errors always; the rest unless a progress bar shows them)."""
    if not summary.succeeded:
        _echo_above_bar(f"{RUN_LOGGER}: error: data id {summary.data_id}: {summary.error}", quiet, log,
                        logging.ERROR)
        if debug and summary.traceback:
            _echo_above_bar(summary.traceback.rstrip(), quiet, log, logging.ERROR)
        return
    if quiet:
        return
    if summary.status == "skipped":
        log.info("[%d/%d] %s skipped: complete from an earlier run with this config", done, total,
                 summary.data_id.label())
    else:
        log.info("[%d/%d] %s done in %.2f s: %s icSrc, %s src", done, total, summary.data_id.label(),
                 summary.seconds or 0.0, summary.n_icsrc, summary.n_src)


def _echo_above_bar(text: str, with_bar: bool, log: logging.Logger, level: int) -> None:
    if with_bar:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        log.log(level, "%s", text.removeprefix(f"{RUN_LOGGER}: "))


def summary_rows(data_ids: list[Any], frames: dict[Any, Any]) -> list[list[str]]:
    """One row of strings per data id for the end-of-run table ("-" where a value is unknown)."""
    rows = []
    for data_id in data_ids:
        frame = frames.get(data_id)
        if frame is None:
            rows.append([data_id.label(), "not run"] + ["-"] * (len(SUMMARY_HEADER) - 2))
            continue
        status = frame.status if frame.succeeded else f"failed ({frame.error_type})"
        rows.append([data_id.label(), status, _fmt(frame.n_src), _fmt(frame.n_icsrc), _fmt(frame.n_matches),
                     _fmt(frame.zero_point, "{:.4f}"), _fmt(frame.ap_corr_central, "{:.4f}"),
                     _fmt(frame.seconds, "{:.2f}")])
    return rows


def _fmt(value: Any, spec: str = "{}") -> str:
    return "-" if value is None else spec.format(value)


def format_table(header: tuple[str, ...], rows: list[list[str]]) -> str:
    """A plain text table: left-aligned first two columns, right-aligned numbers."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Any) -> str:
        return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def main() -> None:
    """Console-script entry point of `process-ccd`."""
    from processccd.parallel import one_blas_thread_per_process

    one_blas_thread_per_process()  # before numpy is imported
    try:
        command.main(args=join_id_tokens(sys.argv[1:]), prog_name="process-ccd")
        status = 0
    except SystemExit as done:
        status = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
    exit_without_teardown(status)


def exit_without_teardown(status: int) -> None:
    """Flush and leave without the interpreter's teardown of the modules (astropy, scipy, ...), which takes
    ~0.4 s after a run. Every product is closed by then (written under a temporary name and renamed), the
    output lock released, the workers joined; the forkserver and resource tracker exit when their pipes
    close. For the console script only: code that calls `command` keeps its normal exit."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
