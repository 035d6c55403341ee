"""A butler-like path mapper: dataset type + DataId -> file, with atomic writes.

Templates live in `configs/mapper.yaml`. Input datasets are read from the input repository (laid out as
the SDSS Data Archive Server: `<run>/<rerun>/corr/<camcol>/fpC-...`), output datasets are written under
`<output>/sci-results/<run>/<camcol>/<filter>/<type>/`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import string
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from processccd import __version__
from processccd.dataid import FILTERS, KEYS, DataId, expand_id_expression
from processccd.errors import DataIdError, InputError, OutputError, ProcessCcdError
from processccd.registry import Registry, has_registry, registry_path

REPOSITORY_FILE = "repository.yaml"
LOCK_FILE = ".lock"
INPUT_DATASETS = ("fpC", "fpM", "tsField", "psField", "asTrans")
# libyaml's emitter when PyYAML was built with it: the text of yaml.SafeDumper, several times faster
SAFE_DUMPER: type = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load_mapper_templates() -> dict[str, dict[str, str]]:
    """The `inputs` and `outputs` template tables of the packaged mapper.yaml."""
    text = resources.files("processccd").joinpath("configs/mapper.yaml").read_text()
    return yaml.safe_load(text)


def dump_yaml(data: Any, sort_keys: bool = True) -> str:
    """`yaml.safe_dump(data, sort_keys=sort_keys)` in block style, through `SAFE_DUMPER`."""
    return yaml.dump(data, Dumper=SAFE_DUMPER, sort_keys=sort_keys, default_flow_style=False)


def _template_regex(template: str) -> re.Pattern[str]:
    """A regex with a named group for the first occurrence of each template field.

    Later occurrences (e.g. `{run}` and `{run:06d}`) match loosely; callers check a match by
    formatting the template again with the parsed values.
    """
    pattern = ""
    seen: set[str] = set()
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        pattern += re.escape(literal)
        if field is None:
            continue
        group = "[ugriz]" if field == "filter" else "[0-9]+"
        pattern += f"(?:{group})" if field in seen else f"(?P<{field}>{group})"
        seen.add(field)
    return re.compile(pattern + "$")


def _template_glob(template: str, known: dict[str, Any]) -> str:
    """A glob for the template with unknown fields replaced by '*'."""
    out = ""
    for literal, field, spec, _conv in string.Formatter().parse(template):
        out += literal.replace("[", "[[]")
        if field is None:
            continue
        value = known.get(field)
        out += "*" if value is None else format(value, spec or "")
    return re.sub(r"\*+", "*", out)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:  # created inside the guard, so that an interrupt (KeyboardInterrupt) just after it still removes it
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        os.close(fd)
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


class Butler:
    """Maps (dataset type, DataId) to files of an input and an output repository."""

    def __init__(self, input_root: Path | str, output_root: Path | str | None = None) -> None:
        self.input_root = Path(input_root)
        self.output_root = None if output_root is None else Path(output_root)
        templates = load_mapper_templates()
        self.input_templates: dict[str, str] = templates["inputs"]
        self.output_templates: dict[str, str] = templates["outputs"]
        self.id_source = ""  # where `resolve` found the ids: "registry PATH" or "directory scan of ROOT"

    # --- paths -------------------------------------------------------------------------------
    def path(self, dataset: str, data_id: DataId) -> Path:
        """The file of `dataset` for `data_id` (input or output repository by dataset type)."""
        values = data_id.as_dict()
        if dataset in self.input_templates:
            if data_id.rerun is None:
                raise DataIdError(f"data id {data_id} has no rerun")
            return self.input_root / self.input_templates[dataset].format(**values)
        if dataset in self.output_templates:
            if self.output_root is None:
                raise OutputError(f"no output repository to hold {dataset}")
            return self.output_root / self.output_templates[dataset].format(**values)
        raise KeyError(f"unknown dataset type {dataset!r}")

    def exists(self, dataset: str, data_id: DataId) -> bool:
        return self.path(dataset, data_id).is_file()

    def get(self, dataset: str, data_id: DataId) -> Any:
        """Read a dataset with its reader; a missing file raises InputError naming it."""
        path = self.path(dataset, data_id)
        if not path.is_file():
            listed = f" (listed in {registry_path(self.input_root)})" if has_registry(self.input_root) else ""
            raise InputError(f"{path}: {dataset} file not found for data id {data_id}{listed}")
        reader = _readers()[dataset]
        return reader(path, data_id)

    def put(self, dataset: str, data_id: DataId, write: Callable[[Path], None]) -> Path:
        """Write an output dataset atomically: `write(tmp_path)` then rename to its final name."""
        path = self.path(dataset, data_id)
        try:
            with atomic_path(path) as tmp:
                write(tmp)
        except OSError as err:
            raise OutputError(f"{path}: cannot write {dataset} ({err.strerror or err})") from err
        return path

    # --- the output repository ---------------------------------------------------------------
    def record_output_repository(self) -> None:
        """Create the output repository and record which input repository it came from."""
        if self.output_root is None:
            return
        record_path = self.output_root / REPOSITORY_FILE
        record: dict[str, Any] = {"inputs": []}
        try:
            self.output_root.mkdir(parents=True, exist_ok=True)
            if record_path.is_file():
                record = yaml.safe_load(record_path.read_text()) or record
            source = str(self.input_root.resolve())
            if source not in record.setdefault("inputs", []):
                record["inputs"].append(source)
            record["processccd_version"] = __version__
            with atomic_path(record_path) as tmp:
                tmp.write_text(dump_yaml(record))
        except OSError as err:
            raise OutputError(f"{self.output_root}: output repository not writable ({err.strerror or err})") \
                from err

    # --- per-frame metadata (written last: its presence with status "success" marks a complete frame) ---
    def input_checksums(self, data_id: DataId) -> dict[str, str]:
        """MD5 of each of the five input files of `data_id` (as the SDSS archive's MD5SUMS); a missing asTrans
        (the fpC header WCS replaced it) is left out."""
        paths = {name: self.path(name, data_id) for name in INPUT_DATASETS}
        return {name: file_md5(path) for name, path in paths.items() if name != "asTrans" or path.is_file()}

    def write_metadata(self, data_id: DataId, record: dict[str, Any]) -> Path:
        """Write the `metadata` YAML of a frame atomically (call it after every other product)."""
        text = dump_yaml(record)
        return self.put("metadata", data_id, lambda path: path.write_text(text))

    def read_metadata(self, data_id: DataId) -> dict[str, Any] | None:
        """The `metadata` record of a frame, or None if absent or unreadable (then the frame is redone)."""
        path = self.path("metadata", data_id)
        try:
            record = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            return None
        return record if isinstance(record, dict) else None

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporary files that a killed run left in the output repository; return them.

        Only call this while holding the output lock: a running writer's temporaries look the same.
        """
        if self.output_root is None or not self.output_root.is_dir():
            return []
        removed = []
        for path in self.output_root.rglob(".*.tmp"):
            if path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # --- data-id discovery -------------------------------------------------------------------
    def resolve(self, values: dict[str, list[int | str]]) -> list[DataId]:
        """Expand an id expression into DataIds, filling the keys it leaves out; `id_source` says from what.

        With a registry (`registry.sqlite3`) the keys are filled from its table `raw`, and an id it does not
        list raises DataIdError; a frame it lists is kept even when its files are missing (processing it
        reports the missing file). Without one, keys left out are discovered from the fpC files present,
        and a fully given id is kept even when its fpC is missing. An expression that matches nothing raises
        DataIdError; an unusable registry raises RegistryError.
        """
        if not self.input_root.is_dir():
            raise InputError(f"{self.input_root}: input repository not found")
        ids: list[DataId] = []
        if has_registry(self.input_root):
            path = registry_path(self.input_root)
            self.id_source = f"registry {path}"
            with Registry(path) as registry:
                for partial in expand_id_expression(values):
                    ids.extend(self._lookup(registry, partial))
        else:
            self.id_source = f"directory scan of {self.input_root}"
            for partial in expand_id_expression(values):
                ids.extend(self._resolve_one(partial))
        return list(dict.fromkeys(ids))

    @staticmethod
    def _lookup(registry: Registry, partial: dict[str, Any]) -> list[DataId]:
        found = registry.frames(partial)
        if not found:
            raise DataIdError(f"data id {_describe(partial)} matches no frame in the registry {registry.path}")
        reruns = sorted({d.rerun for d in found})
        if len(reruns) > 1 and all(partial[k] is not None for k in KEYS if k != "rerun"):
            raise DataIdError(f"data id {_describe(partial)} is ambiguous: reruns {reruns}; give rerun=")
        return found

    def _resolve_one(self, partial: dict[str, Any]) -> list[DataId]:
        missing = [k for k in KEYS if partial[k] is None and k != "rerun"]
        if not missing:
            reruns = [partial["rerun"]] if partial["rerun"] is not None else self._reruns(partial["run"])
            if len(reruns) > 1:
                with_frame = [r for r in reruns if self.exists("fpC", self._data_id(partial, r))]
                reruns = with_frame or reruns
            if not reruns:
                raise DataIdError(f"data id {_describe(partial)} matches no input: no run {partial['run']} "
                                  f"under {self.input_root}")
            if len(reruns) > 1:
                raise DataIdError(f"data id {_describe(partial)} is ambiguous: reruns {reruns}; give rerun=")
            return [self._data_id(partial, reruns[0])]
        found = self._discover(partial)
        if not found:
            raise DataIdError(f"data id {_describe(partial)} matches no fpC file under {self.input_root}")
        return found

    @staticmethod
    def _data_id(partial: dict[str, Any], rerun: int) -> DataId:
        return DataId(run=partial["run"], camcol=partial["camcol"], field=partial["field"],
                      filter=partial["filter"], rerun=rerun)

    def _reruns(self, run: int) -> list[int]:
        run_dir = self.input_root / str(run)
        if not run_dir.is_dir():
            return []
        return sorted(int(p.name) for p in run_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def _discover(self, partial: dict[str, Any]) -> list[DataId]:
        found = _scan(self.input_root, self.input_templates["fpC"], partial)
        return sorted(found, key=lambda d: (d.run, d.camcol, d.field, FILTERS.index(d.filter)))

    def input_frames(self) -> list[DataId]:
        """Every frame of the input repository that has an fpC file (found by a directory scan)."""
        return self._discover(dict.fromkeys(KEYS))

    def discover_outputs(self, dataset: str = "src") -> list[DataId]:
        """DataIds for which the output repository holds `dataset` (rerun left None)."""
        if self.output_root is None:
            return []
        return sorted(set(_scan(self.output_root, self.output_templates[dataset], {})))


def _scan(root: Path, template: str, known: dict[str, Any]) -> list[DataId]:
    """DataIds of the files under `root` that match `template` with the `known` values."""
    regex = _template_regex(template)
    found = []
    for path in root.glob(_template_glob(template, known)):
        relpath = path.relative_to(root).as_posix()
        match = regex.match(relpath)
        if match is None:
            continue
        values: dict[str, Any] = {k: (v if k == "filter" else int(v)) for k, v in match.groupdict().items()}
        if template.format(**values) != relpath:
            continue
        found.append(DataId(run=values["run"], camcol=values["camcol"], field=values["field"],
                            filter=values["filter"], rerun=values.get("rerun")))
    return found


def _describe(partial: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in partial.items() if v is not None)


def _readers() -> dict[str, Callable[[Path, DataId], Any]]:
    """Dataset type -> reader(path, data_id); imported lazily so that the CLI starts fast."""
    from processccd.sdss import astrans, fpc, fpm, psfield, tsfield

    return {
        "fpC": lambda path, _id: fpc.read_fpc(path),
        "fpM": lambda path, _id: fpm.read_fpm_spans(path),
        "tsField": lambda path, data_id: tsfield.read_tsfield(path, data_id.filter),
        "psField": lambda path, data_id: psfield.read_psfield(path, data_id.filter),
        "asTrans": lambda path, data_id: astrans.read_astrans(path, data_id.camcol, data_id.filter, data_id.field),
    }


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB blocks; a missing file raises InputError."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from err
    return digest.hexdigest()


class OutputLockedError(ProcessCcdError):
    """Another run holds the lock of the output repository."""

    exit_code = 1


class OutputLock:
    """An exclusive `fcntl.flock` on `<output>/.lock`, held while a run writes into the repository.

    A second run refuses at once (OutputLockedError) instead of interleaving its writes. The lock file
    is removed on release; acquiring checks that the locked file is still the one on disk, so a run that
    opened the file just before it was removed cannot hold a lock on a stale inode.
    """

    def __init__(self, output_root: Path | str) -> None:
        self.path = Path(output_root) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise OutputError(f"{self.path}: cannot create the lock file ({err.strerror or err})") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputLockedError(f"{self.path.parent}: another process-ccd run is writing into this "
                                            f"output repository ({self.path} is locked); wait for it to finish"
                                            ) from err
                raise OutputError(f"{self.path}: cannot lock ({err.strerror or err})") from err
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
