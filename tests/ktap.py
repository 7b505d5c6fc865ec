# SPDX-License-Identifier: GPL-2.0
"""Read KUnit's KTAP output out of a kernel log."""

import re
from dataclasses import dataclass, field

_TIME = re.compile(r"^\[\s*\d+\.\d+\]\s?")
_PLAN = re.compile(r"^1\.\.(\d+)$")
_RESULT = re.compile(r"^(not ok|ok) (\d+) (\S+)(?: # (SKIP|TODO).*)?$")


@dataclass
class Suite:
    name: str
    ok: bool = False
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    total: int = 0
    failures: list = field(default_factory=list)


@dataclass
class Run:
    plan: int = None
    suites: list = field(default_factory=list)

    @property
    def complete(self):
        return self.plan is not None and len(self.suites) == self.plan

    def count(self, attr):
        return sum(getattr(s, attr) for s in self.suites)


def parse(log, suite_prefix=""):
    """KTAP run in log: the top-level plan and, per suite, its result and
    the counts of its test cases (the results one level down; deeper ones
    are parameters, summed up by their case)."""
    run = Run()
    nested = []
    for raw in log.splitlines():
        line = _TIME.sub("", raw).rstrip()
        if run.plan is None and line == "KTAP version 1":
            run.plan = -1
            continue
        if run.plan is None:
            continue
        body = line.lstrip()
        depth = len(line) - len(body)
        if run.plan == -1 and depth == 0:
            m = _PLAN.match(body)
            if m:
                run.plan = int(m.group(1))
            continue
        m = _RESULT.match(body)
        if not m:
            continue
        if depth > 0:
            nested.append((depth, m))
            continue
        s = Suite(m.group(3), ok=m.group(1) == "ok")
        top = min((d for d, _ in nested), default=0)
        for d, c in nested:
            if d != top:
                continue
            s.total += 1
            if c.group(1) == "not ok":
                s.failed += 1
                s.failures.append(c.group(3))
            elif c.group(4) == "SKIP":
                s.skipped += 1
            else:
                s.passed += 1
        nested = []
        if s.name.startswith(suite_prefix):
            run.suites.append(s)
    return run
