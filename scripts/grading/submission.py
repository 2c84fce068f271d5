"""A submission's lab sources, and nothing else: labs/NN-name/*.cpp and *.hpp.

A submission is a folder (a copy of the kit, possibly a git work tree), a git
repository (its HEAD), or an archive (.tar, .tar.gz, .tgz, .tar.xz, .zip). The labs/
folder may sit at its top or one folder down (an archive of student-kit/). Only regular
files are read: links, devices and anything else are ignored, and so are files larger
than 1 MiB, the student's Makefile, tests, scripts and common/.
"""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path

MAX_FILE = 1 << 20
PATH = re.compile(r"^(?:(?:[^/]+/){0,2})?(labs/(\d\d-[a-z0-9-]+)/([A-Za-z0-9_.-]+\.(?:cpp|hpp)))$")
ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".zip")


def student_name(path: Path) -> str:
    name = path.name
    for ext in ARCHIVES + (".git",):
        if name.endswith(ext):
            name = name[:-len(ext)]
            break
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "student"


def _pick(candidates: dict[str, tuple[str, bytes]], labs) -> dict[str, bytes]:
    """candidates: full path -> (labs/... path, data). Keeps the shallowest copy of each."""
    chosen: dict[str, tuple[int, bytes]] = {}
    for full, (rel, data) in candidates.items():
        lab = rel.split("/")[1]
        if lab not in labs:
            continue
        depth = full.count("/")
        if rel not in chosen or depth < chosen[rel][0]:
            chosen[rel] = (depth, data)
    return {rel: data for rel, (_, data) in chosen.items()}


def _from_dir(root: Path) -> dict[str, tuple[str, bytes]]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        depth = 0 if rel_dir == "." else rel_dir.count("/") + 1
        dirnames[:] = [d for d in dirnames if d != ".git" and depth < 4]
        for f in filenames:
            full = os.path.normpath(os.path.join(rel_dir, f))
            m = PATH.match(full)
            if not m:
                continue
            p = os.path.join(dirpath, f)
            try:
                st = os.lstat(p)
                if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE:
                    continue
                fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as fh:
                    data = fh.read(MAX_FILE + 1)
            except OSError:
                continue
            if len(data) <= MAX_FILE:
                found[full] = (m.group(1), data)
    return found


def _from_tar(path: Path) -> dict[str, tuple[str, bytes]]:
    found = {}
    with tarfile.open(path) as tar:
        for member in tar:
            name = os.path.normpath(member.name).lstrip("/")
            m = PATH.match(name)
            if not m or not member.isreg() or member.size > MAX_FILE or ".." in name.split("/"):
                continue
            f = tar.extractfile(member)
            if f:
                found[name] = (m.group(1), f.read(MAX_FILE + 1)[:MAX_FILE])
    return found


def _from_zip(path: Path) -> dict[str, tuple[str, bytes]]:
    found = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            name = os.path.normpath(info.filename).lstrip("/")
            mode = info.external_attr >> 16
            m = PATH.match(name)
            if not m or info.is_dir() or info.file_size > MAX_FILE or ".." in name.split("/") \
                    or (mode and not stat.S_ISREG(mode)):
                continue
            found[name] = (m.group(1), z.read(info)[:MAX_FILE])
    return found


def _from_git(path: Path) -> dict[str, tuple[str, bytes]]:
    out = subprocess.run(["git", "--git-dir", str(path), "archive", "--format=tar", "HEAD"],
                         capture_output=True, timeout=120)
    if out.returncode != 0:
        raise ValueError("git archive: %s" % out.stderr.decode(errors="replace").strip())
    found = {}
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        for member in tar:
            m = PATH.match(member.name)
            if m and member.isreg() and member.size <= MAX_FILE:
                found[member.name] = (m.group(1), tar.extractfile(member).read())
    return found


def read_sources(path: Path, labs) -> tuple[dict[str, bytes], list[str]]:
    """({"labs/NN-name/server.cpp": bytes}, notes) for the labs named in `labs`."""
    path = Path(path)
    notes = []
    try:
        if path.is_dir() and (path / "HEAD").is_file() and (path / "objects").is_dir():
            found = _from_git(path)                       # a bare repository
        elif path.is_dir():
            found = _from_dir(path)
        elif path.name.endswith(".zip"):
            found = _from_zip(path)
        elif path.name.endswith(ARCHIVES):
            found = _from_tar(path)
        else:
            return {}, ["not a folder, git repository or archive: nothing taken"]
    except (OSError, ValueError, tarfile.TarError, zipfile.BadZipFile, subprocess.SubprocessError) as e:
        return {}, ["could not read the submission: %s" % e]
    sources = _pick(found, set(labs))
    if not sources:
        notes.append("no lab sources found (labs/NN-name/*.cpp, *.hpp)")
    return sources, notes


def find_submissions(folder: Path) -> list[Path]:
    entries = []
    for p in sorted(Path(folder).iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or p.name.endswith(ARCHIVES):
            entries.append(p)
    return entries
