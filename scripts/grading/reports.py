"""What a grade becomes: the table, JSON, JUnit XML, a student's feedback (Markdown),
the class CSV and Gradescope's results.json."""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET

from .scoring import counted

# The usual cause of a failure, by what its message says (first match wins).
CAUSES = [
    (r"not implemented: task (\S+)", "task {0} is still a TODO: see the handout's \"Your turn\""),
    (r"not implemented", "a part of the program is still a TODO: see the handout's \"Your turn\""),
    (r"is not built", "the program did not compile: see the build log at the end of this file"),
    (r"no ready line", "the server never printed `ready: PROTO ADDRESS` on stdout: it stopped "
                       "at start-up (see its stderr), or it did not flush the line"),
    (r"timed out after \d+s \(\d+ of|not run: the lab timed out",
     "the lab ran out of time: a call that blocks forever (a read with nothing to come, a "
     "client that never shuts down its side) makes every test after it wait"),
    (r"still running after", "the program did not stop: it must exit on end of input, and "
                             "within a second of SIGINT or SIGTERM"),
    (r"output ended \(exit -11\)|exit 139|Segmentation", "the program crashed (segmentation fault)"),
    (r"output ended \(exit -6\)|exit 134|abort", "the program aborted (an assertion or an uncaught exception)"),
    (r"output ended", "the program exited before it printed what the test waits for"),
    (r"no output line within|no line matching", "the program did not print the expected line "
                                               "in time: it is stuck, or prints something else"),
    (r"ConnectionRefused", "nothing listens where the ready line says (bind/listen missing, or "
                           "the printed port is not the bound one)"),
    (r"ConnectionReset|BrokenPipe", "the server closed or reset the connection too early"),
    (r"timeout|timed out", "a reply never came: the program stopped answering"),
    (r"sanitizer report", "AddressSanitizer or UndefinedBehaviorSanitizer found a memory or "
                          "undefined-behaviour error"),
    (r"assert", "the program's output or exit status is not what the lab asks for"),
]


def usual_cause(message: str) -> str:
    for pattern, cause in CAUSES:
        m = re.search(pattern, message or "", re.I)
        if m:
            return cause.format(*m.groups())
    return "see the message above"


def first_line(message: str, width: int = 160) -> str:
    for line in (message or "").splitlines():
        if line.strip():
            return line.strip()[:width]
    return "failed"


def describe(test: dict) -> str:
    if test.get("doc"):
        return test["doc"]
    name = test["name"].split("[", 1)
    text = name[0].removeprefix("test_").replace("_", " ")
    return text + (" [" + name[1] if len(name) > 1 else "")


# --------------------------------------------------------------------- table

def table(grade) -> str:
    lines = ["%-20s %9s %13s  %s" % ("lab", "tests", "points", "first failure")]
    for r in grade.labs:
        lines.append("%-20s %9s %13s  %s" % (r.lab, "%d/%d" % (r.passed, r.counted),
                                              "%.1f/%g" % (r.points, r.max), r.reason))
    lines.append("%-20s %9s %13s" % ("total", "", "%.1f/%g" % (grade.total, grade.max)))
    return "\n".join(lines)


# ---------------------------------------------------------------------- JSON

def to_json(grade) -> dict:
    return {"student": grade.name, "total": round(grade.total, 2), "max": grade.max,
            "seconds": grade.seconds, "sandboxed": grade.sandboxed, "notes": grade.notes,
            "labs": [{"lab": r.lab, "points": round(r.points, 2), "max": r.max,
                      "passed": r.passed, "total": r.counted, "reason": r.reason,
                      "timed_out": r.timed_out, "seconds": r.seconds, "notes": r.notes,
                      "tests": [{"lab": t["lab"], "name": t["name"], "outcome": t["outcome"],
                                 "counted": counted(t), "given": bool(t.get("given")),
                                 "seconds": round(t["seconds"], 3), "doc": t.get("doc", ""),
                                 "message": t["message"], "stderr": t.get("stderr", [])}
                                for t in r.tests]} for r in grade.labs]}


def write_json(path, grade):
    with open(path, "w") as f:
        json.dump(to_json(grade), f, indent=2)


# --------------------------------------------------------------------- JUnit

def write_junit(path, grade):
    suites = ET.Element("testsuites", name=grade.name)
    for r in grade.labs:
        tests = r.tests
        suite = ET.SubElement(suites, "testsuite", name=r.lab, tests=str(len(tests)),
                              failures=str(sum(t["outcome"] == "failed" for t in tests)),
                              skipped=str(sum(t["outcome"] == "skipped" for t in tests)),
                              time=str(r.seconds))
        ET.SubElement(ET.SubElement(suite, "properties"), "property", name="points",
                      value="%.1f/%g" % (r.points, r.max))
        if r.reason and not tests:
            case = ET.SubElement(suite, "testcase", classname=r.lab, name="collect")
            ET.SubElement(case, "failure", message=r.reason)
        for t in tests:
            case = ET.SubElement(suite, "testcase", classname=r.lab, name=t["name"],
                                 time=str(round(t["seconds"], 3)))
            if t["outcome"] == "failed":
                ET.SubElement(case, "failure", message=first_line(t["message"])).text = t["message"]
            elif t["outcome"] == "skipped":
                ET.SubElement(case, "skipped", message=first_line(t["message"]))
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


# ------------------------------------------------------------------ feedback

def _fence(text: str) -> str:
    text = text.replace("```", "'''")
    return "```\n%s\n```" % text.rstrip("\n")


def feedback(grade) -> str:
    out = ["# Feedback for %s" % grade.name, "",
           "Total: **%.1f / %g** points." % (grade.total, grade.max), ""]
    for note in grade.notes:
        out += ["> %s" % note, ""]
    out += ["| lab | tests passed | points |", "|---|---|---|"]
    for r in grade.labs:
        out.append("| %s | %d/%d | %.1f / %g |" % (r.lab, r.passed, r.counted, r.points, r.max))
    out.append("")
    for r in grade.labs:
        failed = [t for t in r.tests if t["outcome"] == "failed" and counted(t)]
        if not failed and not r.reason:
            continue
        out += ["## %s: %.1f / %g" % (r.lab, r.points, r.max), ""]
        if r.timed_out or not r.tests:
            out += [r.reason, ""]
        for t in failed:
            out += ["### %s" % t["name"], "", "What it checks: %s" % describe(t), "",
                    "Usual cause: %s." % usual_cause(t["message"]).rstrip("."), "",
                    "What happened:", "", _fence(t["message"][-3000:] or "failed"), ""]
            for s in t.get("stderr", []):
                out += ["stderr of `%s` (%s), last lines:" % (
                    s["program"], "still running" if s.get("status") is None
                    else "exit %s" % s["status"]), "", _fence("\n".join(s["tail"].splitlines()[-15:])), ""]
    if grade.build_log:
        warn = [l for l in grade.build_log.splitlines() if re.search(r"\b(error|warning):|\*\*\*", l)]
        out += ["## Build", "", "The build's errors and warnings (last 60 lines):", "",
                _fence("\n".join(warn[-60:]) or "none"), ""]
    return "\n".join(out)


# ------------------------------------------------------------------- the class

def write_class_csv(path, grades, labs):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["student"] + [lab[:2] for lab in labs] + ["total"])
        for g in grades:
            by_lab = {r.lab: r.points for r in g.labs}
            w.writerow([g.name] + ["%.2f" % by_lab.get(lab, 0.0) for lab in labs]
                       + ["%.2f" % g.total])


# ----------------------------------------------------------------- Gradescope

def gradescope_results(grade) -> dict:
    """Gradescope's results.json: one entry per counted test, each worth its share of the
    lab's points, so that the tests' scores add up to the total."""
    tests = []
    for r in grade.labs:
        if not r.tests:
            tests.append({"name": "%s: %s" % (r.lab, "collect"), "score": 0.0,
                          "max_score": r.max, "output": r.reason, "visibility": "visible",
                          "status": "failed"})
        for t in r.tests:
            if not counted(t):
                continue
            value = t.get("value", 0.0)
            ok = t["outcome"] == "passed"
            output = "" if ok else "%s\n\nUsual cause: %s.\n\n%s" % (
                describe(t), usual_cause(t["message"]), t["message"][-2000:])
            for s in t.get("stderr", []) if not ok else []:
                output += "\n\nstderr of %s:\n%s" % (s["program"], s["tail"][-800:])
            tests.append({"name": "%s: %s" % (r.lab, t["name"]), "score": round(value if ok else 0.0, 4),
                          "max_score": round(value, 4), "output": output,
                          "visibility": "visible", "status": "passed" if ok else "failed"})
    return {"score": round(grade.total, 2), "output": "\n".join(grade.notes),
            "visibility": "visible", "stdout_visibility": "hidden", "tests": tests}
