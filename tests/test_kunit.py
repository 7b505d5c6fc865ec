# SPDX-License-Identifier: GPL-2.0
"""The KUnit run at boot (Rust doctests and every built-in KUnit suite)."""

import pytest

import ktap
from conftest import boot


@pytest.fixture(scope="module")
def kunit_log():
    # Two vCPUs: rust_kernel_virtio races a reader of a published pointer
    # against taking it, which needs a second CPU (RCU readers are not
    # preempted here). See README ("KUnit boots run with -smp 2").
    g = boot("kunit", kunit=True, smp=2, mem="2G")
    try:
        yield g.log()
    finally:
        g.close()


def test_kunit_at_boot(kunit_log):
    run = ktap.parse(kunit_log)
    assert run.plan and run.plan > 0, "no KTAP output in the boot log"
    assert run.complete, f"KTAP plan {run.plan}, {len(run.suites)} suites reported"
    bad = [f"{s.name}: {s.failures or 'failed'}" for s in run.suites if not s.ok]
    assert not bad, "failing KUnit suites:\n" + "\n".join(bad)
    assert run.count("failed") == 0
    print(f"KUnit: {len(run.suites)} suites, {run.count('total')} tests, "
          f"{run.count('passed')} passed, {run.count('skipped')} skipped")
    for s in run.suites:
        print(f"  {s.name}: {s.passed}/{s.total}")


def test_rust_doctests_ran(kunit_log):
    run = ktap.parse(kunit_log)
    doc = [s for s in run.suites if s.name == "rust_doctests_kernel"]
    assert doc, "rust_doctests_kernel did not run"
    assert doc[0].ok and doc[0].total > 300 and doc[0].passed == doc[0].total - doc[0].skipped


def test_rust_balloon_suite(kunit_log):
    """The balloon wrapper's own KUnit suite ran and passed, every case."""
    run = ktap.parse(kunit_log)
    suite = [s for s in run.suites if s.name == "rust_kernel_balloon"]
    assert suite, "rust_kernel_balloon did not run"
    s = suite[0]
    assert s.ok and s.failed == 0 and s.skipped == 0 and s.total >= 7, s


@pytest.mark.parametrize("name,cases", [
    ("rust_kernel_virtio", 9),
    ("rust_kernel_virtio_pm", 2),
    ("rust_kernel_unbind_fence", 7),
    ("rust_kernel_vmstat", 1),
])
def test_rust_suite(kunit_log, name, cases):
    """The virtio and vmstat abstractions' KUnit suites ran and passed."""
    run = ktap.parse(kunit_log)
    suite = [s for s in run.suites if s.name == name]
    assert suite, f"{name} did not run"
    s = suite[0]
    assert s.ok and s.failed == 0 and s.skipped == 0 and s.total == cases, s
