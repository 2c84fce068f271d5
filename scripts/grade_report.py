"""A pytest plugin for scripts/grade: one JSON line per finished test, written as soon as
the test ends, so a lab stopped at its time limit still leaves what it had finished.

Enabled with `-p grade_report` (scripts/ on PYTHONPATH); writes to $GRADE_REPORT.
"""

import json
import os

_markers = {}
_results = {}


def pytest_collection_modifyitems(items):
    for item in items:
        _markers[item.nodeid] = sorted({m.name for m in item.iter_markers()})


def _message(report):
    if report.passed:
        return ""
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message
    return str(report.longrepr).strip().split("\n")[-1]


def pytest_runtest_logreport(report):
    entry = _results.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0, "message": ""})
    entry["seconds"] += report.duration
    if report.failed and entry["outcome"] != "failed":
        entry["outcome"] = "failed"
        entry["message"] = _message(report)
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"
        entry["message"] = _message(report)
    if report.when == "teardown":
        entry["nodeid"] = report.nodeid
        entry["markers"] = _markers.get(report.nodeid, [])
        path = os.environ.get("GRADE_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(entry) + "\n")
