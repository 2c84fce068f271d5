"""The fault sweep's summary at the end of a run: per lab, the faults tried and survived.

A plugin of its own (the Makefile loads it: PYTHONPATH=tests/e2e pytest -p fault_summary),
not a hook of tests/e2e/conftest.py: with pytest-xdist the tests run in workers, and only
a plugin loaded this way also runs in the process that prints the summary.
"""

import re

_fault_results: dict[str, dict[str, list[str]]] = {}


def pytest_runtest_logreport(report):
    """Remembers the outcome of every test marked `faults`, per lab."""
    if "faults" not in report.keywords or report.when != "call" and not report.failed:
        return
    num = re.match(r"test_(\d\d)_", report.nodeid.split("::")[0].rsplit("/", 1)[-1])
    lab = num.group(1) if num else "other"
    entry = _fault_results.setdefault(lab, {"passed": [], "failed": []})
    name = report.nodeid.split("::", 1)[-1]
    if report.failed:
        if name not in entry["failed"]:
            entry["failed"].append(name)
    elif report.when == "call" and report.passed:
        entry["passed"].append(name)


def pytest_terminal_summary(terminalreporter):
    """The fault sweep's summary: faults tried per lab, survived, and anything lost."""
    if not _fault_results:
        return
    tr = terminalreporter
    tr.section("fault sweep")
    for lab in sorted(_fault_results):
        entry = _fault_results[lab]
        survived = [n for n in entry["passed"] if n not in entry["failed"]]
        tried = len(survived) + len(entry["failed"])
        tr.write_line("lab %s: %d faults tried, %d survived%s" % (
            lab, tried, len(survived),
            "; lost: " + ", ".join(entry["failed"]) if entry["failed"] else ""))
