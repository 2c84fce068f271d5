"""A pytest plugin for the grader: what was collected, then one JSON line per finished
test, written as soon as the test ends (a lab stopped at its time limit still reports what
it had finished).

Enabled with `-p grade_report` (scripts/ on PYTHONPATH). It writes to the descriptor
$GRADE_REPORT_FD, which the grader opened for pytest alone: student programs never inherit
it (the harness starts them with close_fds), and in the sandbox they run without the
capabilities that /proc/PID/fd of pytest would need.

With pytest-xdist (-n N) only the controller writes: it collects the tests itself for the
"collected" line, and each worker's report brings the programs' stderr in its
user_properties. The workers never had the descriptor (execnet starts them with close_fds).

$GRADE_UNGRADED (a JSON list of shell patterns) names tests that check the instructor's
own tree, not the student's programs: they are deselected. Lines:

    {"collected": [{"nodeid": ..., "markers": [...], "doc": "..."}, ...]}
    {"nodeid": ..., "outcome": "passed|failed|skipped", "seconds": 0.1, "message": "...",
     "stderr": [{"program": "server --port 0", "status": 1, "tail": "..."}]}
"""

import fnmatch
import inspect
import json
import os

import pytest

_results = {}
_fd = None
_STDERR = "grade_stderr"  # the user_properties key of the programs' stderr tails


def _write(entry):
    global _fd
    if _fd is None:
        value = os.environ.get("GRADE_REPORT_FD", "")
        _fd = int(value) if value.isdigit() else -1
    if _fd < 0:
        return
    data = (json.dumps(entry) + "\n").encode()
    while data:
        data = data[os.write(_fd, data):]


def _ungraded():
    try:
        patterns = json.loads(os.environ.get("GRADE_UNGRADED") or "[]")
    except ValueError:
        return []
    return [p for p in patterns if isinstance(p, str)]


def _doc(item):
    doc = inspect.getdoc(getattr(item, "function", None)) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def pytest_configure(config):
    global _fd
    if hasattr(config, "workerinput"):  # an xdist worker: its controller reports
        _fd = -1


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session):
    """Under xdist the controller collects nothing of its own; it does here, once, so that
    the collected line names every test with its markers, as without xdist."""
    if session.config.pluginmanager.hasplugin("dsession"):
        session.perform_collect()


def pytest_collection_modifyitems(config, items):
    patterns = _ungraded()
    if patterns:
        keep, drop = [], []
        for item in items:
            name = item.name.split("[", 1)[0]
            (drop if any(fnmatch.fnmatch(name, p) for p in patterns) else keep).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    _write({"collected": [{"nodeid": item.nodeid,
                           "markers": sorted({m.name for m in item.iter_markers()}),
                           "doc": _doc(item)} for item in session.items]})


def _message(report):
    if report.passed:
        return ""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    return str(report.longrepr).strip().split("\n")[-1]


def _programs(item):
    """The tail of each lab program's stderr, from the harness's `lab` fixture."""
    lab = getattr(item, "funcargs", {}).get("lab")
    found = []
    for p in getattr(lab, "programs", None) or []:
        try:
            argv = [os.path.basename(str(p.argv[0]))] + [str(a) for a in p.argv[1:]]
            status = p.proc.poll()
            if status is not None:  # it has exited: let the harness read all it wrote
                p.drain(1.0)
            tail = p.stderr[-1500:]
        except Exception:  # the harness changed shape: report without it
            continue
        if tail.strip():
            found.append({"program": " ".join(argv)[:200], "status": status, "tail": tail})
    return found[-4:]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.user_properties.append((_STDERR, _programs(item)))


def pytest_runtest_logreport(report):
    entry = _results.setdefault(report.nodeid, {})
    entry.setdefault("outcome", "passed")
    entry.setdefault("message", "")
    entry["seconds"] = entry.get("seconds", 0.0) + report.duration
    for key, value in getattr(report, "user_properties", None) or []:
        if key == _STDERR and "stderr" not in entry and isinstance(value, list):
            entry["stderr"] = value
    if report.failed and entry["outcome"] != "failed":
        entry["outcome"] = "failed"
        entry["message"] = _message(report)
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"
        entry["message"] = _message(report)
    if report.when == "teardown":
        entry["nodeid"] = report.nodeid
        entry.setdefault("stderr", [])
        _write(entry)
        _results.pop(report.nodeid, None)
