"""Fetch the SDSS demo data set and verify MD5SUMS: 10 frames with the input registry (registry.sqlite3,
_mapper), stars.fits, and the 2013 LSST outputs of the demo and of the small demo (6 of the frames).

The files are copied from a local mirror (`../shared/sdss-demo` beside the checkout) when it exists,
otherwise downloaded from the public `lsst_dm_stack_demo` repository at commit c2f24c5.
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.request
from pathlib import Path

from processccd.butler import file_md5
from processccd.errors import InputError

log = logging.getLogger("processccd.fetch")

UPSTREAM_URL = "https://raw.githubusercontent.com/lsst/lsst_dm_stack_demo/c2f24c5/"

# MD5 sums of the demo data (the MD5SUMS file of the data set, kept here so a download can be verified).
DEMO_MD5SUMS: dict[str, str] = {
    "astrometry_net_data/stars.fits": "c531322097ba25a72e4f0ed22740e23a",
    "detected-sources.txt.expected": "85d797ca459985f04c3491cc322d51c3",
    "detected-sources.txt.expected_small": "47a344ea67466fedbe102bd4bad53922",
    "input/_mapper": "7508778a4bd926018a0f13fa55d4c050",
    "input/registry.sqlite3": "a691174e6bf2840af66ab9491b933025",
    "input/4192/40/astrom/asTrans-004192.fit": "08d06d1548316921447597c5e888980b",
    "input/4192/40/calibChunks/4/tsField-004192-4-40-0300.fit": "3f49c0b221ead9d3f29f911e39b0c6c0",
    "input/4192/40/corr/4/fpC-004192-g4-0300.fit.gz": "7555836ec5103f50f1ecf87125c7812e",
    "input/4192/40/corr/4/fpC-004192-i4-0300.fit.gz": "59f133ac79e2607aca73897dc41b7aa3",
    "input/4192/40/corr/4/fpC-004192-r4-0300.fit.gz": "d73a32b7d90c4e700f76f750675dc6ad",
    "input/4192/40/corr/4/fpC-004192-u4-0300.fit.gz": "19fad97a940ed70b0b577ea4baae4eff",
    "input/4192/40/corr/4/fpC-004192-z4-0300.fit.gz": "a79d408bd0c9740c2eb6b7feec796647",
    "input/4192/40/objcs/4/fpM-004192-g4-0300.fit": "87e4bd9604246edeb447584ce6142ddf",
    "input/4192/40/objcs/4/fpM-004192-i4-0300.fit": "0df284f6e4ebad3fa1df734b20027b36",
    "input/4192/40/objcs/4/fpM-004192-r4-0300.fit": "16a58fc450098890115758a3b1023ddc",
    "input/4192/40/objcs/4/fpM-004192-u4-0300.fit": "d8d796f02353c5ebd078645b9f7fb421",
    "input/4192/40/objcs/4/fpM-004192-z4-0300.fit": "6a34486f40e87f051a00c201671a75f6",
    "input/4192/40/objcs/4/psField-004192-4-0300.fit": "f43391e33f2eae696b74b85b10cbdc05",
    "input/6377/40/astrom/asTrans-006377.fit": "b656719751c0b048f656cbe2e51c53c0",
    "input/6377/40/calibChunks/4/tsField-006377-4-40-0399.fit": "98ff29080b219660842decad8bf0cff5",
    "input/6377/40/corr/4/fpC-006377-g4-0399.fit.gz": "c80f87fb52862825c16203a0f4bee2b1",
    "input/6377/40/corr/4/fpC-006377-i4-0399.fit.gz": "1ba7c4ea6b744b72a13300479643552b",
    "input/6377/40/corr/4/fpC-006377-r4-0399.fit.gz": "aef670f18c1de4ebd8c2250f03908506",
    "input/6377/40/corr/4/fpC-006377-u4-0399.fit.gz": "ecbd10f2b3248786b56dc2b6851fbe62",
    "input/6377/40/corr/4/fpC-006377-z4-0399.fit.gz": "245e9cfce7927f86cc029e956ce50ec5",
    "input/6377/40/objcs/4/fpM-006377-g4-0399.fit": "bfea0885d29bb6b6354d9346482be597",
    "input/6377/40/objcs/4/fpM-006377-i4-0399.fit": "fb71ace6344d41fc70d15702fef7d93d",
    "input/6377/40/objcs/4/fpM-006377-r4-0399.fit": "0c961a8733d54e9fc0ed4e8bd82f8423",
    "input/6377/40/objcs/4/fpM-006377-u4-0399.fit": "9b704807f546ef1929e8b09de6849ce6",
    "input/6377/40/objcs/4/fpM-006377-z4-0399.fit": "ff1b7f7bf9c41e462e8c86a18dccf47a",
    "input/6377/40/objcs/4/psField-006377-4-0399.fit": "46656057e4e49eb993622207414b6c25",
}


def _install(source: Path | None, relpath: str, target: Path) -> None:
    """Copy (or download) one file to `target` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    if source is not None:
        shutil.copyfile(source / relpath, tmp)
    else:
        url = UPSTREAM_URL + relpath
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=120) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise InputError(f"{url}: download failed ({err})") from err
    os.replace(tmp, target)


def fetch_demo_data(dest: Path, mirror: Path | None = None) -> list[str]:
    """Fill `dest` with the demo files, verifying every MD5 sum; return the paths that were (re)installed.

    Idempotent: files already present with the right checksum are left alone. A file whose checksum
    stays wrong after installation raises InputError naming it.
    """
    dest = Path(dest)
    if mirror is not None and not (mirror / "MD5SUMS").is_file():
        mirror = None
    installed = []
    for relpath, expected in DEMO_MD5SUMS.items():
        target = dest / relpath
        if target.is_file() and file_md5(target) == expected:
            continue
        _install(mirror, relpath, target)
        actual = file_md5(target)
        if actual != expected:
            target.unlink()
            raise InputError(f"{relpath}: MD5 checksum mismatch (expected {expected}, got {actual})")
        installed.append(relpath)
    return installed


def default_mirror(repo_root: Path) -> Path:
    """The local mirror beside a checkout: `<repo_root>/../shared/sdss-demo`."""
    return repo_root.parent / "shared" / "sdss-demo"
