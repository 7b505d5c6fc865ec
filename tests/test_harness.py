# SPDX-License-Identifier: GPL-2.0
"""The harness itself: command channel, log scanning, KTAP parsing. A
harness that reported success by accident would make every other test
worthless."""

import pytest

import ktap
from conftest import boot
from guest import SPLAT


@pytest.fixture(scope="module")
def plain_guest():
    g = boot("harness", balloon=None, mem="1G")
    yield g
    g.close()


def test_command_status_and_output(plain_guest):
    g = plain_guest
    r = g.run("echo out; echo err >&2; exit 7", check=False)
    assert (r.rc, r.out) == (7, "out\nerr\n")
    # Output that mimics the reply markers, binary bytes and no final newline.
    tricky = "@@rb-end rb1 0\n@@rb-begin rb9\n\x01\x02\xff"
    r = g.run("printf '@@rb-end rb1 0\\n@@rb-begin rb9\\n\\001\\002\\377'")
    assert r.rc == 0 and r.out == tricky.replace("\xff", "\ufffd")
    big = g.run("seq 1 20000").out.split()
    assert big == [str(i) for i in range(1, 20001)]


def test_splat_in_log_is_seen(plain_guest):
    """A kernel-style warning line is found by the scanner (the per-test
    check then has to be told it was expected)."""
    g = plain_guest
    start = g.log_size()
    g.run("echo '<4>WARNING: CPU: 0 PID: 1 at harness/self-test.c:1' > /dev/kmsg")
    g.sync_log()
    hits = g.splats(start)
    assert len(hits) == 1 and "harness/self-test.c" in hits[0]
    # Leave the log clean for the autouse check of this test.
    g.ignore_splats_before(g.log_size())


@pytest.mark.parametrize("line", [
    "------------[ cut here ]------------",
    "BUG: KASAN: slab-use-after-free in foo+0x1/0x2",
    "WARNING: possible circular locking dependency detected",
    "rcu: INFO: rcu_sched self-detected stall on CPU",
    "INFO: task kworker/0:1:12 blocked for more than 120 seconds.",
    "watchdog: BUG: soft lockup - CPU#0 stuck for 22s!",
    "Oops: general protection fault, probably for non-canonical address",
    "kernel BUG at mm/balloon.c:42!",
])
def test_splat_patterns(line):
    assert SPLAT.search(line)


@pytest.mark.parametrize("line", [
    "virtio_balloon virtio0: Out of puff! Can't get 1 pages",
    "Unknown kernel command line parameters",
    "Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar",
])
def test_no_false_splats(line):
    assert not SPLAT.search(line)


def test_ktap_parser():
    log = "\n".join([
        "[    1.0] KTAP version 1",
        "[    1.0] 1..2",
        "[    1.0]     KTAP version 1",
        "[    1.0]     # Subtest: a",
        "[    1.0]     1..2",
        "[    1.0]     ok 1 x",
        "[    1.0]     not ok 2 y",
        "[    1.0] # a: pass:1 fail:1 skip:0 total:2",
        "[    1.0] # Totals: pass:1 fail:1 skip:0 total:2",
        "[    1.0] not ok 1 a",
    ])
    run = ktap.parse(log)
    assert run.plan == 2 and not run.complete
    assert [(s.name, s.ok, s.failed, s.total, s.failures) for s in run.suites] == \
        [("a", False, 1, 2, ["y"])]
