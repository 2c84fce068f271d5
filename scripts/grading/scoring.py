"""Points: tests/weights.toml, the report lines of grade_report, and a lab's score."""

from __future__ import annotations

import fnmatch
import json
try:
    import tomllib
except ImportError:  # Python before 3.11 (Ubuntu 22.04): the tomli package
    import tomli as tomllib
from fractions import Fraction


class WeightsError(Exception):
    pass


class Weights:
    """tests/weights.toml: each lab's points, and the groups that share them."""

    def __init__(self, path):
        try:
            with open(path, "rb") as f:
                w = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise WeightsError("%s: %s" % (path, e)) from None
        self.doc = w
        self.groups = w.get("group", [])
        if not self.groups:
            raise WeightsError("%s: no [[group]] tables" % path)
        for g in self.groups:
            if not isinstance(g.get("name"), str) or not isinstance(g.get("points", 0), (int, float)) \
                    or g.get("points", 0) < 0:
                raise WeightsError("%s: each [[group]] needs a name and points >= 0" % path)
        if not any(g.get("scored", True) and g.get("points", 0) > 0 for g in self.groups):
            raise WeightsError("%s: no group is worth any points" % path)

    def lab_points(self, num: str) -> float:
        default = self.doc.get("default", {}).get("points", 100)
        return float(self.doc.get("lab", {}).get(num, {}).get("points", default))

    def ungraded_patterns(self) -> list[str]:
        """Test names of the groups that check the instructor's tree (scored = false)."""
        return [p for g in self.groups if not g.get("scored", True) for p in g.get("match", [])]

    def group_of(self, name: str, markers) -> dict:
        base = name.split("[", 1)[0]
        for g in self.groups:
            if "marker" in g and g["marker"] in markers:
                return g
            if any(fnmatch.fnmatch(base, pattern) for pattern in g.get("match", [])):
                return g
        return self.groups[-1]


def counted(test: dict) -> bool:
    """A test counts unless it was skipped, checks the instructor's tree, or already
    passes on the untouched kit (it then checks given code, not the student's)."""
    return test["outcome"] in ("passed", "failed") and not test.get("given") \
        and not test.get("ungraded")


def values(tests: list[dict], lab_points: float, weights: Weights) -> dict[str, Fraction]:
    """Each counted test's worth: its group's share of the lab's points, divided equally
    among the group's tests (a parametrized test counts once per parameter: the fault
    sweep is credited per fault). Shares are scaled over the groups that have counted
    tests in this lab, so the values add up to exactly the lab's points."""
    members: dict[str, list[dict]] = {}
    share: dict[str, Fraction] = {}
    for t in tests:
        if not counted(t):
            continue
        g = weights.group_of(t["name"], t.get("markers", []))
        if not g.get("scored", True):
            continue
        members.setdefault(g["name"], []).append(t)
        share[g["name"]] = Fraction(g.get("points", 0)).limit_denominator(10**6)
    total = sum(share.values())
    if not members or total == 0:
        return {}
    points = Fraction(lab_points).limit_denominator(10**6)
    return {t["nodeid"]: points * share[name] / total / len(group)
            for name, group in members.items() for t in group}


def score(tests: list[dict], lab_points: float, weights: Weights) -> float:
    """The lab's points: the worth of the counted tests that passed. Passing every
    counted test gives exactly the lab's points, whatever the weights say."""
    worth = values(tests, lab_points, weights)
    return float(sum((worth[t["nodeid"]] for t in tests
                      if t["nodeid"] in worth and t["outcome"] == "passed"), Fraction(0)))


# --------------------------------------------------------------- report lines

def parse_report(data: bytes) -> tuple[list[dict], dict[str, dict], int]:
    """(collected tests, finished tests by nodeid, malformed lines ignored). Whatever a
    line holds, this never raises: a bad line is counted and skipped."""
    collected, finished, bad = [], {}, 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            bad += 1
            continue
        if not isinstance(entry, dict):
            bad += 1
            continue
        if "collected" in entry:
            items = entry["collected"]
            if not isinstance(items, list):
                bad += 1
                continue
            for item in items:
                if isinstance(item, dict) and isinstance(item.get("nodeid"), str):
                    collected.append({"nodeid": item["nodeid"],
                                      "markers": [m for m in item.get("markers", [])
                                                  if isinstance(m, str)]
                                      if isinstance(item.get("markers"), list) else [],
                                      "doc": item["doc"] if isinstance(item.get("doc"), str) else ""})
            continue
        nodeid = entry.get("nodeid")
        outcome = entry.get("outcome")
        if not isinstance(nodeid, str) or outcome not in ("passed", "failed", "skipped"):
            bad += 1
            continue
        seconds = entry.get("seconds")
        stderr = []
        for s in entry.get("stderr") or []:
            if isinstance(s, dict) and isinstance(s.get("tail"), str):
                stderr.append({"program": str(s.get("program", ""))[:200],
                               "status": s.get("status") if isinstance(s.get("status"), int) else None,
                               "tail": s["tail"][-1500:]})
        finished[nodeid] = {"outcome": outcome,
                            "seconds": float(seconds) if isinstance(seconds, (int, float)) else 0.0,
                            "message": str(entry.get("message") or "")[:6000],
                            "stderr": stderr[:4]}
    return collected, finished, bad
