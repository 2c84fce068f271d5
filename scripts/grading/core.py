"""The grader: a submission's lab sources laid over the kit's, built with the
instructor's Makefile and tested with the instructor's tests, each step in a sandbox.

Trees, made once per grader from the instructor's checkout:

- the test tree (/grader in the sandbox, read-only): tests/e2e, tests/weights.toml,
  scripts/, pytest.ini and the labs' folder names; no lab source, so no solution.
- the kit base: Makefile, common/ and the labs' sources as the student kit has them
  (TASK regions replaced by TODOs). A submission's files replace the kit's; a file it
  lacks stays as in the kit, so an untouched or empty submission has nothing but TODOs.

Per submission: a build in one sandbox (/work/src read-only, /work/build writable, the
compiler and make without capabilities), then each lab's tests in a fresh sandbox of
their own (the build read-only), so that a lab that hangs, or leaves something running,
costs only its own points. A lab's tests run `lab_workers` at a time (pytest-xdist): most
of a lab's time is spent waiting (for timeouts, for peers that are silent on purpose), so
they overlap well even on one core.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import kit as kitlib
from .sandbox import (Bind, Limits, Sandbox, SandboxError, available, build_launcher,
                      drop_caps_argv, remove_stale_temp_dirs, temp_dir)
from .scoring import Weights, counted, parse_report, score, values

REPO = Path(__file__).resolve().parents[2]
LAB_NAME = re.compile(r"^\d\d-[a-z0-9-]+$")
SOURCE = re.compile(r"^labs/(\d\d-[a-z0-9-]+)/([A-Za-z0-9_.-]+\.(?:cpp|hpp))$")
MAX_SOURCE = 1 << 20  # bytes: larger "sources" are not taken
TEST_TREE_PARTS = ["tests/e2e", "tests/weights.toml", "scripts", "pytest.ini"]
BUILD_PARTS = ["Makefile", "common"]


def instructor_files(tree: Path) -> list[str]:
    """The files of the instructor's tree: what git tracks, or every file."""
    if (tree / ".git").exists():
        out = subprocess.run(["git", "ls-files", "-z"], cwd=tree, capture_output=True, check=True)
        return sorted(f for f in out.stdout.decode().split("\0") if f and (tree / f).is_file())
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*")
                  if p.is_file() and not str(p.relative_to(tree)).startswith(("build/", "dist/", ".git/")))


def lab_names(tree: Path) -> list[str]:
    return sorted(d.name for d in (tree / "labs").iterdir() if d.is_dir() and LAB_NAME.match(d.name))


def _copy(src: Path, dest: Path):
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    os.chmod(dest, 0o755 if os.access(src, os.X_OK) else 0o644)


def _readable_tree(path: Path):
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o755)
        for f in files:
            p = os.path.join(root, f)
            os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)


# ------------------------------------------------------------------ results

@dataclass
class LabResult:
    lab: str
    max: float
    points: float = 0.0
    tests: list = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0
    timed_out: bool = False
    notes: list = field(default_factory=list)

    @property
    def passed(self):
        return sum(t["outcome"] == "passed" for t in self.tests if counted(t))

    @property
    def counted(self):
        return sum(counted(t) for t in self.tests)


@dataclass
class Grade:
    name: str
    labs: list = field(default_factory=list)
    build_log: str = ""
    seconds: float = 0.0
    sandboxed: bool = True
    notes: list = field(default_factory=list)

    @property
    def total(self):
        return sum(l.points for l in self.labs)

    @property
    def max(self):
        return sum(l.max for l in self.labs)


# ------------------------------------------------------------------- grader

class Grader:
    def __init__(self, instructor: Path = REPO, labs: list[str] | None = None,
                 lab_timeout: float = 120.0, build_timeout: float = 300.0,
                 student_timeout: float | None = None, limits: Limits | None = None,
                 weights_path: Path | None = None, baseline: dict | None = None,
                 sandbox: bool = True, jobs_per_build: int = 2, opt: str = "-O1",
                 lab_workers: int = 4):
        self.instructor = Path(instructor).resolve()
        self.all_labs = lab_names(self.instructor)
        self.labs = labs or self.all_labs
        self.lab_timeout = lab_timeout
        self.build_timeout = build_timeout
        self.student_timeout = student_timeout
        self.limits = limits or Limits()
        self.weights = Weights(weights_path or self.instructor / "tests" / "weights.toml")
        self.baseline = baseline or {}
        self.jobs_per_build = jobs_per_build
        self.opt = opt
        reason = available() if sandbox else "turned off"
        self.sandboxed = reason is None
        self.unsandboxed_reason = reason
        self.lab_workers = lab_workers if lab_workers > 1 and _have_xdist(self.sandboxed) else 1
        self._common = None
        self._launcher_path = None
        self._common_lock = threading.Lock()
        remove_stale_temp_dirs()
        self.workdir = temp_dir("trees")
        os.chmod(self.workdir, 0o755)
        self.test_tree = self.workdir / "grader"
        self.kit_base = self.workdir / "base"
        self.kit_notes: list[str] = []
        try:
            self._make_trees()
        except BaseException:
            self.close()
            raise

    def close(self):
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- trees

    def _make_trees(self):
        files = instructor_files(self.instructor)
        for f in files:
            if any(f == p or f.startswith(p + "/") for p in TEST_TREE_PARTS):
                if "__pycache__" not in f:
                    _copy(self.instructor / f, self.test_tree / f)
            if any(f == p or f.startswith(p + "/") for p in BUILD_PARTS):
                _copy(self.instructor / f, self.kit_base / f)
        kit_tree = (self.instructor / "tests" / "kit.json").is_file()
        for lab in self.all_labs:
            (self.test_tree / "labs" / lab).mkdir(parents=True, exist_ok=True)
            (self.kit_base / "labs" / lab).mkdir(parents=True, exist_ok=True)
            if lab not in self.labs:
                continue
            sources = [f for f in files if SOURCE.match(f) and f.split("/")[1] == lab]
            texts = {f: (self.instructor / f).read_text() for f in sources}
            has_tasks = any(kitlib.TASK.match(line) for t in texts.values() for line in t.split("\n"))
            if any(kitlib.uses_old_markers(t) for t in texts.values()) or not (has_tasks or kit_tree):
                self.kit_notes.append("lab %s has no TASK regions: its sources are not given, "
                                      "a submission must bring them all" % lab[:2])
                continue
            try:  # a kit's own tree (tests/kit.json) is the kit already: taken as it is
                kit_texts = {f: kitlib.strip_regions(t, f).text if has_tasks else t
                             for f, t in texts.items()}
            except kitlib.KitError as e:
                self.kit_notes.append("lab %s's sources are not given: %s" % (lab[:2], e))
                continue
            for f, text in kit_texts.items():
                out = self.kit_base / f
                out.write_text(text)
                os.chmod(out, 0o644)
        _readable_tree(self.workdir)

    # -- one submission

    def grade_sources(self, name: str, sources: dict[str, bytes]) -> Grade:
        """Grades a submission given as {"labs/NN-name/file.cpp": bytes}."""
        began = time.monotonic()
        grade = Grade(name, sandboxed=self.sandboxed)
        if not self.sandboxed:
            grade.notes.append("not sandboxed (%s): tests that need root are skipped"
                               % self.unsandboxed_reason)
        stage = temp_dir("submission")
        box = None
        try:
            os.chmod(stage, 0o711)
            src = stage / "src"
            shutil.copytree(self.kit_base, src)
            taken = 0
            for rel, data in sources.items():
                m = SOURCE.match(rel)
                if not m or m.group(1) not in self.all_labs or len(data) > MAX_SOURCE:
                    continue
                dest = src / rel
                dest.write_bytes(data)
                os.chmod(dest, 0o644)
                taken += 1
            _readable_tree(src)
            build = stage / "build"
            common = self._common_objects()
            if common:  # the instructor's common/, compiled once for the whole class
                shutil.copytree(common, build, copy_function=shutil.copy2)
            else:
                build.mkdir()
            box = Sandbox(name, self.limits) if self.sandboxed else None
            if box:
                box.chown_writable(build)
            targets = ["%s/%s/%s" % ("/work/build" if box else build, lab, prog)
                       for lab in self.labs for prog in ("server", "client")]
            make = ["make", "-C", "/work/src" if box else str(src), "-k",
                    "-j%d" % self.jobs_per_build, "BUILD=%s" % ("/work/build" if box else build),
                    "OPT=%s" % self.opt, "WERROR=", "SAN=", "CXXFLAGS=", "CPPFLAGS=",
                    "LDFLAGS=", *targets]
            budget = self._left(began)
            r = self._run(box, drop_caps_argv() + make if box else make,
                          [Bind(src, "/work/src"), Bind(build, "/work/build", writable=True)],
                          {"MAKEFLAGS": ""}, min(self.build_timeout, budget), report=False)
            grade.build_log = r.output.decode(errors="replace")
            if r.timed_out:
                grade.build_log += "\ngrader: the build was stopped after %ds\n" % int(
                    min(self.build_timeout, budget))
            bindir = stage / "bin"
            self._wrappers(build, bindir, box is not None)
            for lab in self.labs:
                grade.labs.append(self._grade_lab(box, lab, build, bindir, self._left(began)))
        finally:
            if box:
                box.close()
            shutil.rmtree(stage, ignore_errors=True)
        grade.seconds = round(time.monotonic() - began, 1)
        return grade

    def _common_objects(self) -> Path | None:
        """common/ built once (in a sandbox, from the kit's copy) and copied into each
        submission's build folder with its times, so that make does not build it again.
        None when it does not build: each submission's build then says why."""
        with self._common_lock:
            if self._common is None:
                out = self.workdir / "common-build"
                out.mkdir()
                box = Sandbox("common", self.limits) if self.sandboxed else None
                try:
                    if box:
                        box.chown_writable(out)
                    target = "%s/obj/libcommon.a" % ("/work/build" if box else out)
                    make = ["make", "-C", "/work/src" if box else str(self.kit_base),
                            "BUILD=%s" % ("/work/build" if box else out), "OPT=%s" % self.opt,
                            "WERROR=", "SAN=", "CXXFLAGS=", "CPPFLAGS=", "LDFLAGS=",
                            "-j%d" % self.jobs_per_build, target]
                    r = self._run(box, drop_caps_argv() + make if box else make,
                                  [Bind(self.kit_base, "/work/src"),
                                   Bind(out, "/work/build", writable=True)],
                                  {"MAKEFLAGS": ""}, self.build_timeout, report=False)
                finally:
                    if box:
                        box.close()
                ok = r.returncode == 0 and (out / "obj" / "libcommon.a").is_file()
                self._common = out if ok else False
                if ok:
                    for root, dirs, files in os.walk(out):
                        os.chown(root, 0, 0)
                        for f in files:
                            os.chown(os.path.join(root, f), 0, 0)
            return self._common or None

    def grade_build(self, name: str, build: Path) -> Grade:
        """Grades ready-made programs: build/NN-name/{server,client}."""
        began = time.monotonic()
        grade = Grade(name, sandboxed=self.sandboxed)
        if not self.sandboxed:
            grade.notes.append("not sandboxed (%s): tests that need root are skipped"
                               % self.unsandboxed_reason)
        stage = temp_dir("submission")
        box = None
        try:
            os.chmod(stage, 0o711)
            copy = stage / "build"
            copy.mkdir()
            for lab in self.labs:  # a copy: the sandbox sees only what the grader gives it
                for p in sorted((Path(build) / lab).glob("*")):
                    if p.is_file() and p.stat().st_size <= 256 << 20:
                        (copy / lab).mkdir(exist_ok=True)
                        shutil.copyfile(p, copy / lab / p.name)
                        os.chmod(copy / lab / p.name, 0o755 if os.access(p, os.X_OK) else 0o644)
            _readable_tree(copy)
            box = Sandbox(name, self.limits) if self.sandboxed else None
            bindir = stage / "bin"
            self._wrappers(copy, bindir, box is not None)
            for lab in self.labs:
                grade.labs.append(self._grade_lab(box, lab, copy, bindir, self._left(began)))
        finally:
            if box:
                box.close()
            shutil.rmtree(stage, ignore_errors=True)
        grade.seconds = round(time.monotonic() - began, 1)
        return grade

    def _left(self, began: float) -> float:
        if self.student_timeout is None:
            return float("inf")
        return max(1.0, self.student_timeout - (time.monotonic() - began))

    def _launcher(self) -> Path | None:
        """scripts/grading/launcher.c, compiled once per grader (no student input)."""
        with self._common_lock:
            if self._launcher_path is None:
                out = self.workdir / "launcher"
                r = build_launcher(out)
                self._launcher_path = out if r.returncode == 0 else False
            return self._launcher_path or None

    def _wrappers(self, build: Path, bindir: Path, sandboxed: bool):
        """LABS_BIN for the tests: each built program behind a launcher that takes away
        every capability before the program runs."""
        launcher = self._launcher() if sandboxed else None
        for lab in self.labs:
            for prog in ("server", "client"):
                real = build / lab / prog
                try:
                    st = os.lstat(real)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                (bindir / lab).mkdir(parents=True, exist_ok=True)
                target = bindir / lab / prog
                if launcher:
                    shutil.copyfile(launcher, target)
                    os.chmod(target, 0o755)
                elif sandboxed:  # no compiler for the launcher: a script (needs 2 more fds)
                    target.write_text("#!/bin/sh\nexec %s /work/build/%s/%s \"$@\"\n"
                                      % (" ".join(drop_caps_argv()), lab, prog))
                    os.chmod(target, 0o755)
                else:
                    target.symlink_to(real)
        if bindir.exists():
            _readable_tree(bindir)

    # -- one lab

    def _test_file(self, lab: str) -> str | None:
        found = sorted((self.test_tree / "tests" / "e2e").glob("test_%s_*.py" % lab[:2]))
        return "tests/e2e/%s" % found[0].name if found else None

    def _grade_lab(self, box, lab: str, build: Path, bindir: Path, budget: float) -> LabResult:
        num = lab[:2]
        result = LabResult(lab, self.weights.lab_points(num))
        test_file = self._test_file(lab)
        if test_file is None:
            result.reason = "no tests for this lab (tests/e2e/test_%s_*.py)" % num
            return result
        timeout = min(self.lab_timeout, budget)
        per_test = int(max(10, min(60, timeout)))
        root = "/grader" if box else str(self.test_tree)
        command = [sys.executable if not box else "/usr/bin/python3", "-P", "-m", "pytest",
                   "-p", "no:cacheprovider", "-p", "grade_report", "-q", "-o", "addopts=",
                   "--timeout", str(per_test), "-c", "%s/pytest.ini" % root,
                   "--rootdir", root, "%s/%s" % (root, test_file)]
        env = {"LABS_BIN": "/work/bin" if box else str(bindir),
               "PYTHONPATH": "%s/scripts" % root, "PYTHONDONTWRITEBYTECODE": "1",
               "GRADE_UNGRADED": json.dumps(self.weights.ungraded_patterns())}
        for key in ("LABS_READY_TIMEOUT",):
            if os.environ.get(key):
                env[key] = os.environ[key]
        if box:
            command[-5:-5] = ["--basetemp", "/tmp/pytest"]
        if self.lab_workers > 1:
            command[-5:-5] = ["-p", "xdist", "-n", str(self.lab_workers)]
        binds = [Bind(self.test_tree, "/grader"), Bind(build, "/work/build"),
                 Bind(bindir if bindir.exists() else self.test_tree / "labs", "/work/bin")]
        r = self._run(box, command, binds, env, timeout, report=True, cwd=root)
        collected, finished, bad = parse_report(r.report)
        result.seconds = r.seconds
        result.timed_out = r.timed_out
        if bad:
            result.notes.append("%d malformed report line(s) ignored" % bad)
        if not collected:
            tail = r.output.decode(errors="replace").strip().splitlines()[-3:]
            result.reason = ("timed out after %ds before its tests were collected" % int(timeout)
                             if r.timed_out else "its tests could not be collected: %s"
                             % (" / ".join(tail) or "exit %s" % r.returncode))
            return result
        given = set(self.baseline.get(lab, []))
        for item in collected:
            nodeid = item["nodeid"]
            name = nodeid.split("::", 1)[-1]
            entry = finished.get(nodeid)
            if entry:
                test = dict(entry)
            elif r.timed_out:
                test = {"outcome": "failed", "seconds": 0.0, "stderr": [],
                        "message": "not run: the lab timed out after %ds" % int(timeout)}
            else:
                test = {"outcome": "failed", "seconds": 0.0, "stderr": [],
                        "message": "not run: the test run stopped early (exit %s)" % r.returncode}
            test.update({"lab": lab, "name": name, "nodeid": nodeid, "markers": item["markers"],
                         "doc": item["doc"], "given": name in given})
            result.tests.append(test)
        result.points = score(result.tests, result.max, self.weights)
        worth = values(result.tests, result.max, self.weights)
        for t in result.tests:
            t["value"] = float(worth.get(t["nodeid"], 0))
        failures = [t for t in result.tests if t["outcome"] == "failed" and counted(t)]
        if r.timed_out:
            done = sum(1 for t in result.tests if t["nodeid"] in finished)
            result.reason = "timed out after %ds (%d of %d tests done)" % (
                int(timeout), done, len(result.tests))
        elif failures:
            result.reason = "%s: %s" % (failures[0]["name"], one_line(failures[0]["message"]))
        return result

    def _run(self, box, command, binds, env, timeout, report, cwd="/"):
        if box:
            return box.run(command, binds, env, timeout=timeout, cwd=cwd, report=report)
        return run_direct(command, env, timeout, report, cwd)


def _have_xdist(sandboxed: bool) -> bool:
    """pytest-xdist where the tests run: the system's python3 in the sandbox, else this one
    (scripts/install-deps installs it)."""
    if sandboxed:
        return Path("/usr/lib/python3/dist-packages/xdist/__init__.py").is_file()
    return importlib.util.find_spec("xdist") is not None


def one_line(message: str) -> str:
    for line in (message or "").splitlines():
        if line.strip():
            return line.strip()[:160]
    return "failed"


def run_direct(command, env, timeout, report, cwd):
    """Without a sandbox (not root, or no bubblewrap): the same command in a process group
    of its own, stopped at its time limit. Programs that left the group may outlive it."""
    from .sandbox import Result, _drain
    full_env = dict(os.environ, **env)
    rep_r = rep_w = -1
    if report:
        rep_r, rep_w = os.pipe()
        full_env["GRADE_REPORT_FD"] = str(rep_w)
    out_r, out_w = os.pipe()
    began = time.monotonic()
    p = subprocess.Popen(command, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                         stdout=out_w, stderr=out_w, start_new_session=True,
                         pass_fds=[rep_w] if report else [])
    os.close(out_w)
    if report:
        os.close(rep_w)
    output, data = bytearray(), bytearray()
    readers = [_drain(out_r, output, 512 * 1024)] + ([_drain(rep_r, data, 64 << 20)] if report else [])
    try:
        rc = p.wait(timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        rc, timed_out = None, True
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()
    for t in readers:
        t.join(10)
    return Result(rc, bytes(output), bytes(data), round(time.monotonic() - began, 2), timed_out, 0)
