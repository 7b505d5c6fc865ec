# SPDX-License-Identifier: GPL-2.0
"""The simulated balloon (samples/rust/rust_balloon_sim.rs) and the balloon
kselftest, which exercise the Rust balloon API with no hypervisor."""

import re

import pytest

from guest import MiB, PAGE

SIM = "/sys/kernel/debug/rust_balloon_sim"
BALLOON_OPTS = None  # no virtio-balloon device: nothing here needs one
GUEST_MEM = "1G"  # every size is the guest's own (conftest.guest_mem)


@pytest.fixture
def sim(guest):
    guest.sh("insmod /modules/rust_balloon_sim.ko")
    yield guest
    if "rust_balloon_sim" in guest.sh("cat /proc/modules"):
        guest.sh("rmmod rust_balloon_sim")


def stats(guest):
    return {k: int(v) for k, v in (l.split() for l in guest.sh(f"cat {SIM}/stats").splitlines())}


def set_target(guest, pages):
    return guest.run(f"echo {pages} > {SIM}/target", check=False, timeout=600)


def test_kselftest_balloon_compaction(sim):
    r = sim.run("/kselftest/balloon/balloon_compaction", check=False, timeout=900)
    print(r.out)
    assert "1..6" in r.out
    results = re.findall(r"^(ok|not ok) \d+ (.*)$", r.out, re.M)
    assert len(results) == 6, r.out
    failed = [d for s, d in results if s != "ok"]
    assert not failed and r.rc == 0, r.out
    m = re.search(r"compaction migrated (\d+) balloon pages", r.out)
    assert m and int(m.group(1)) > 0


@pytest.mark.parametrize("text,errno", [
    ("abc", "Invalid argument"),
    ("-5", "Invalid argument"),
    ("12 13", "Invalid argument"),
    ("0x100", "Invalid argument"),
    ("99999999999999999999999", "Invalid argument"),
    ("4503599627370496", "Numerical result out of range"),
    ("1" * 40, "Invalid argument"),
])
def test_bad_target_is_refused(sim, text, errno):
    """Bad input returns a clear errno and changes nothing."""
    assert set_target(sim, 1000).rc == 0
    before = stats(sim)
    # dd, unlike the shell's builtins, reports the errno of a failed write.
    r = sim.run(f"printf '%s\\n' '{text}' | dd of={SIM}/target bs=64 2>&1", check=False)
    assert r.rc != 0 and errno in r.out, r.out
    assert stats(sim) == before
    assert set_target(sim, 0).rc == 0


def test_inflating_beyond_memory_stops_gracefully(sim):
    """A target far above RAM: the balloon stops at its reserve, nothing is
    OOM-killed, no warning, and it deflates completely afterwards."""
    v0 = sim.vmstat()
    ram_pages = sim.meminfo()["MemTotal"] * 1024 // PAGE
    assert set_target(sim, 10 * ram_pages).rc == 0
    st = stats(sim)
    print(f"stopped at {st['pages']} pages of {10 * ram_pages}")
    assert 0 < st["pages"] < ram_pages
    assert st["stopped_short"] >= 1
    assert sim.run("echo alive").out == "alive\n"
    assert sim.meminfo()["MemAvailable"] > 16 * 1024
    assert sim.vmstat()["oom_kill"] == v0["oom_kill"]
    assert set_target(sim, 0).rc == 0
    assert sim.vmstat()["nr_balloon_pages"] == 0


def test_allocation_failure_stops_inflation(sim):
    """Injected page-allocation failures (fail_page_alloc, limited to the
    writing task) stop inflation without harm; it resumes once they stop."""
    fa = "/sys/kernel/debug/fail_page_alloc"
    setup = (f"echo Y > {fa}/task-filter; echo N > {fa}/ignore-gfp-wait; "
             f"echo N > {fa}/ignore-gfp-highmem; echo 0 > {fa}/min-order; "
             f"echo 0 > {fa}/space; echo 0 > {fa}/verbose; "
             f"echo 100 > {fa}/probability; echo -1 > {fa}/times")
    sim.sh(setup)
    try:
        before = stats(sim)
        r = sim.run(f"echo 1 > /proc/self/make-it-fail; echo 4096 > {SIM}/target",
                    check=False)
        assert r.rc == 0, r.out
        st = stats(sim)
        assert st["pages"] == 0
        assert st["stopped_short"] == before["stopped_short"] + 1
    finally:
        sim.sh(f"echo 0 > {fa}/probability")
    assert set_target(sim, 4096).rc == 0
    assert stats(sim)["pages"] == 4096
    assert set_target(sim, 0).rc == 0


def test_unload_returns_every_page(sim):
    mem0 = sim.meminfo()["MemTotal"]
    free0 = sim.free_pages()
    pages = sim.meminfo()["MemAvailable"] * 1024 // 3 // PAGE
    assert set_target(sim, pages).rc == 0
    assert stats(sim)["pages"] == pages
    assert sim.vmstat()["nr_balloon_pages"] == pages
    assert mem0 - sim.meminfo()["MemTotal"] == pages * PAGE // 1024
    sim.sh("rmmod rust_balloon_sim")
    assert sim.vmstat()["nr_balloon_pages"] == 0
    assert sim.meminfo()["MemTotal"] == mem0
    assert abs(sim.free_pages() - free0) * PAGE < 16 * MiB
    # Unloading with a full balloon is the driver's job, not the safety net's.
    assert "dropped with" not in sim.log()


def fragment_inflate_compact(guest):
    """Balloon pages between free pages, then compaction (as the kselftest
    does); returns the vmstat balloon counters before and after."""
    avail = guest.meminfo()["MemAvailable"] * 1024
    guest.sh(f"fragment {avail * 6 // 10 // MiB} >/tmp/frag.out 2>&1 & "
             "echo $! >/tmp/frag.pid; "
             "while ! grep -q ready /tmp/frag.out; do sleep 0.2; done", timeout=600)
    assert set_target(guest, guest.meminfo()["MemFree"] * 1024 // PAGE).rc == 0
    guest.sh("kill $(cat /tmp/frag.pid); "
             "while kill -0 $(cat /tmp/frag.pid) 2>/dev/null; do sleep 0.2; done")
    keys = ("nr_balloon_pages", "balloon_deflate", "balloon_migrate")
    before = {k: guest.vmstat()[k] for k in keys}
    guest.sh("echo 1 > /proc/sys/vm/compact_memory", timeout=600)
    return before, {k: guest.vmstat()[k] for k in keys}


@pytest.mark.parametrize("answer", ["busy", "refuse"])
def test_refused_migrations_leave_the_balloon_alone(sim, answer):
    sim.sh(f"echo {answer} > {SIM}/host")
    before, after = fragment_inflate_compact(sim)
    st = stats(sim)
    assert st["refused_migrations"] > 0 and st["migrated"] == 0
    assert after == before
    assert st["pages"] == after["nr_balloon_pages"]
    assert set_target(sim, 0).rc == 0


def test_bad_host_answer_is_refused(sim):
    r = sim.run(f"echo maybe | dd of={SIM}/host bs=16 2>&1", check=False)
    assert r.rc != 0 and "Invalid argument" in r.out
    assert sim.sh(f"cat {SIM}/host") == "migrate\n"
