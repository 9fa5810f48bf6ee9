"""Safe extraction of uploaded zip files.

An uploaded archive is hostile until proven otherwise. Before anything is written, every entry
is checked: no absolute paths, drive letters or `..` (zip-slip), no symlinks, no encryption,
and the declared sizes and the file count stay under limits. While extracting, the bytes
actually written are counted too, because a zip bomb can lie in its headers. Everything goes to
a temporary folder beside `dest` that becomes `dest` only when the whole archive passed: a
refused archive leaves nothing behind, and nothing is ever written outside `dest`.
Non-image files are skipped and counted, not extracted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from . import progress
from .datasets.raw import is_image_file
from .errors import DatasetError
from .settings import DEFAULT_MAX_FILES, DEFAULT_MAX_TOTAL_BYTES

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
# Image files are already compressed: a real one deflates by a few percent, a flat PNG maybe 50x.
# 200x is a bomb (a 12000x12000 PNG in a 6 KB zip is 20,000x). Entries under 1 MB are not judged.
MAX_COMPRESSION_RATIO = 200
_RATIO_FLOOR = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")
_IGNORED_PREFIXES = ("__MACOSX/",)  # macOS resource forks: "._x.jpg" files that are not images


@dataclass
class ExtractReport:
    dest: Path
    extracted: int = 0  # image files written
    total_bytes: int = 0  # bytes written
    skipped: int = 0  # entries that are not images (not written)
    skipped_names: list[str] = field(default_factory=list)


def _refuse(message: str, hint: str = "upload a zip of an image folder tree: ROOT/<class>/<image>") -> DatasetError:
    return DatasetError(message, hint)


def _safe_name(info: zipfile.ZipInfo) -> PurePosixPath:
    """The entry's relative path, or a refusal naming the entry."""
    name = info.filename.replace("\\", "/")  # zips made on Windows may use backslashes
    if name.startswith("/") or _DRIVE.match(name):
        raise _refuse(f"the zip holds an absolute path: {info.filename!r}", "refused for safety; zip the folder with relative paths")
    path = PurePosixPath(name)
    if any(part == ".." for part in path.parts):
        raise _refuse(f"the zip holds a path that climbs out of its folder: {info.filename!r}",
                      "refused for safety (zip-slip); zip the folder with relative paths")
    if "\x00" in name:
        raise _refuse(f"the zip holds a file name with a NUL byte: {info.filename!r}", "refused for safety")
    return path


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)  # 3 = Unix


def extract_zip(zip_path_or_fileobj: str | os.PathLike | BinaryIO, dest: str | os.PathLike,
                max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES, max_files: int = DEFAULT_MAX_FILES) -> ExtractReport:
    """Extract the image files of a zip into `dest` (which must not exist yet), or refuse it whole."""
    dest = Path(dest)
    if dest.exists():
        raise DatasetError(f"{dest} already exists", "extract into a new folder")
    try:
        archive = zipfile.ZipFile(zip_path_or_fileobj)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise _refuse(f"not a readable zip file: {exc}") from None
    with archive:
        wanted, report = _plan(archive, dest, max_total_bytes, max_files)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
        try:
            with progress.task("extracting the zip", len(wanted)) as shown:
                for info, rel in wanted:
                    report.total_bytes += _extract_one(archive, info, rel, staging, max_total_bytes - report.total_bytes)
                    report.extracted += 1
                    shown.advance()
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    log.info("extracted %d images (%d bytes) into %s; skipped %d other files",
             report.extracted, report.total_bytes, dest, report.skipped)
    return report


def check_zip(zip_path: str | os.PathLike, max_total_bytes: int, max_files: int) -> None:
    """Every check `extract_zip` makes before writing, without writing: for a zip whose images
    are already extracted or cached, so today's limits still hold for it."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            _plan(archive, Path("."), max_total_bytes, max_files)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise _refuse(f"the zip cannot be read ({exc})", "upload the file again") from None


def _plan(archive: zipfile.ZipFile, dest: Path, max_total_bytes: int, max_files: int):
    """Check every entry before writing anything; return the image entries to extract."""
    report = ExtractReport(dest)
    wanted: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    infos = archive.infolist()
    if len(infos) > max_files:
        raise _refuse(f"the zip holds {len(infos)} entries, more than the limit of {max_files}",
                      "upload fewer files, or ask the administrator to raise the limit")
    declared = 0
    for info in infos:
        rel = _safe_name(info)  # every entry, even skipped ones: a hostile archive is refused whole
        if _is_symlink(info):
            raise _refuse(f"the zip holds a symbolic link: {info.filename!r}", "refused for safety; zip real files only")
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise _refuse(f"the zip holds an encrypted file: {info.filename!r}", "upload an unencrypted zip")
        if info.filename.startswith(_IGNORED_PREFIXES) or not is_image_file(rel.name):
            report.skipped += 1
            report.skipped_names.append(info.filename)
            continue
        if info.file_size > _RATIO_FLOOR and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise _refuse(f"the zip's {info.filename!r} inflates {info.file_size / max(info.compress_size, 1):,.0f}-fold "
                          f"({info.compress_size:,} -> {info.file_size:,} bytes), past the limit of "
                          f"{MAX_COMPRESSION_RATIO}-fold: a decompression bomb",
                          "refused for safety; zip the images as they are (PNG/JPEG barely compress)")
        declared += info.file_size
        if declared > max_total_bytes:
            raise _refuse(f"the zip's images add up to more than the limit of {max_total_bytes:,} bytes",
                          "upload a smaller zip, or ask the administrator to raise the limit")
        wanted.append((info, rel))
    if not wanted:
        raise _refuse("the zip holds no image files" + (f" (only {report.skipped} other files)" if report.skipped else ""),
                      "zip a folder of class subfolders with .jpg/.png images")
    return wanted, report


def _extract_one(archive: zipfile.ZipFile, info: zipfile.ZipInfo, rel: PurePosixPath, staging: Path, budget: int) -> int:
    target = staging.joinpath(*rel.parts)
    # defence in depth: the checked name must still resolve inside the staging folder
    if staging.resolve() not in target.resolve().parents:
        raise _refuse(f"the zip entry {info.filename!r} would be written outside the extraction folder", "refused for safety")
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with archive.open(info) as src, open(target, "xb") as out:
            while block := src.read(_CHUNK):
                written += len(block)
                if written > info.file_size or written > budget:  # headers lied: a zip bomb
                    raise _refuse(f"the zip entry {info.filename!r} expands beyond its declared size or the size limit",
                                  "refused as a possible zip bomb; upload a normal zip")
                out.write(block)
    except FileExistsError:
        raise _refuse(f"the zip holds {info.filename!r} twice", "zip each file once") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:  # NotImplemented: odd compression
        raise _refuse(f"the zip entry {info.filename!r} is damaged: {exc}", "upload the zip again") from None
    return written

