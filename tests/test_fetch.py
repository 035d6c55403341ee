"""The demo-data fetch: copy from a mirror or download, verify every MD5 sum, idempotent."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from processccd import fetch
from processccd.butler import file_md5
from processccd.errors import InputError

MIRROR = fetch.default_mirror(Path(__file__).resolve().parents[1])  # ../shared/sdss-demo beside the checkout
SMALL_FILES = ("tsField-004192-4-40-0300.fit", "asTrans-006377.fit")
SMALL = {k: v for k, v in fetch.DEMO_MD5SUMS.items() if k.endswith(SMALL_FILES)}


@pytest.fixture
def small_set(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Two small files of the data set stand for all of it (keeps the test fast)."""
    monkeypatch.setattr(fetch, "DEMO_MD5SUMS", SMALL)
    return SMALL


@pytest.fixture
def http_mirror(demo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A loopback HTTP server publishing the demo files, standing in for the upstream repository."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(demo_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    monkeypatch.setattr(fetch, "UPSTREAM_URL", url)
    try:
        yield url
    finally:
        server.shutdown()
        thread.join()


@pytest.mark.skipif(not (MIRROR / "MD5SUMS").is_file(), reason="no local mirror beside the checkout")
def test_copy_from_mirror_is_verified_and_idempotent(small_set, tmp_path):
    installed = fetch.fetch_demo_data(tmp_path, MIRROR)
    assert sorted(installed) == sorted(small_set)
    for relpath, md5 in small_set.items():
        assert file_md5(tmp_path / relpath) == md5
    assert fetch.fetch_demo_data(tmp_path, MIRROR) == []


def test_download_when_there_is_no_mirror(small_set, http_mirror, tmp_path):
    installed = fetch.fetch_demo_data(tmp_path, mirror=tmp_path / "no-mirror")
    assert sorted(installed) == sorted(small_set)
    assert not list(tmp_path.rglob(".*.part"))


def test_checksum_mismatch_names_the_file(small_set, demo_dir, tmp_path):
    mirror = tmp_path / "mirror"
    for relpath in small_set:
        (mirror / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo_dir / relpath, mirror / relpath)
    (mirror / "MD5SUMS").write_text("")
    corrupted = next(iter(small_set))
    with open(mirror / corrupted, "ab") as f:
        f.write(b"x")
    with pytest.raises(InputError, match=Path(corrupted).name):
        fetch.fetch_demo_data(tmp_path / "dest", mirror)
    assert not (tmp_path / "dest" / corrupted).exists()


def test_failed_download_names_the_url(small_set, http_mirror, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "UPSTREAM_URL", http_mirror + "missing/")
    with pytest.raises(InputError, match="download failed"):
        fetch.fetch_demo_data(tmp_path, mirror=None)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


@pytest.mark.skipif(not (MIRROR / "MD5SUMS").is_file(), reason="no local mirror beside the checkout")
def test_every_file_of_the_data_sets_md5sums_is_installed():
    """The 31 files of MD5SUMS, among them input/_mapper, input/registry.sqlite3 and the small demo's list."""
    listed = {}
    for line in (MIRROR / "MD5SUMS").read_text().splitlines():
        md5, relpath = line.split()
        listed[relpath.removeprefix("./")] = md5
    assert listed == fetch.DEMO_MD5SUMS
