# SPDX-License-Identifier: GPL-2.0
"""Both balloon drivers against the simulated virtio-balloon device
(vdpa_sim_balloon, bound through virtio_vdpa), which answers from a worker
after a delay, never inside the notify, and checks the guest: every frame in
the balloon holds a pattern that must be intact when it leaves, and every
request must make sense (tests/simdev.py). QEMU under TCG can show neither.

The parity part runs with answer delays of 0 and 50 ms. The hostile
part makes the device misbehave; where the C driver hangs, its test is a
strict expected failure naming the reason, and the Rust driver must end
every wait and finish unbind (its waits are bounded once unbind starts).
Every test ends with the device reporting no protocol error and no
pattern violation, and every page back in the guest.

The final device state of each test is written to
build/sim-device/<test>.json.
"""

import json
import sys
import time
from pathlib import Path

import pytest

from conftest import DRIVERS, boot, guest_mem
from guest import MiB, PAGE
from simdev import (F_DEFLATE_ON_OOM, F_FREE_PAGE_HINT, F_MUST_TELL_HOST,
                    F_PAGE_POISON, F_REPORTING, F_STATS_VQ, FRAME, STAT_MEMTOT,
                    SimBalloon)

BALLOON_OPTS = None  # no QEMU balloon: the simulated device is the only one
GUEST_MEM = "1G"  # sizes are the guest's own, or at most 512 MiB (conftest.guest_mem)
STATES = Path(__file__).resolve().parent.parent / "build" / "sim-device"
DELAYS = {"0ms": 0, "50ms": 50000}
DRIVER_OK = 4

C_HANGS = pytest.mark.xfail(
    strict=True, reason="the C driver waits for ever for a buffer the device "
    "does not return (tell_host's wait_event), and remove waits for that work")


def frames(nbytes):
    return nbytes // FRAME


def save(request, st):
    STATES.mkdir(parents=True, exist_ok=True)
    name = request.node.name.replace("/", "_")
    (STATES / f"{name}.json").write_text(json.dumps(st, indent=1) + "\n")


class Bound:
    """A simulated device with a balloon driver bound to it."""

    def __init__(self, guest, which, features, delay_us=0, accepted=None):
        """`accepted`: the features the driver must accept, if not all."""
        self.guest = guest
        self.module = DRIVERS[which]
        self.mem0 = guest.meminfo()["MemTotal"]
        self.log0 = guest.log_size()
        self.sim = SimBalloon(guest, features, delay_us=delay_us)
        self.loaded = False
        try:
            guest.sh(f"insmod /modules/{self.module}.ko")
            self.loaded = True
            st = self.sim.wait(lambda s: s["status"] & DRIVER_OK, "DRIVER_OK", 60)
            accepted = features if accepted is None else accepted
            assert st["negotiated"] & features == accepted, st
            self.free0, self.info0 = self.quiet_free()[1], guest.meminfo()
        except BaseException:
            # The next test in this guest must find neither the device nor the driver.
            self.teardown()
            raise

    def teardown(self):
        """Releases what the device holds, unloads, deletes: no checks."""
        if self.sim.exists and self.guest.alive():
            self.sim.ctl("release")
            if self.loaded:
                self.unload(check=False)
            self.sim.delete()

    def inflate(self, nbytes, timeout=300):
        self.sim.target(frames(nbytes))
        st, secs = self.sim.wait_actual(frames(nbytes), timeout)
        assert self.guest.vmstat()["nr_balloon_pages"] == nbytes // PAGE
        return st, secs

    def unload(self, timeout=120, check=True):
        """Unloads the driver; every page the balloon held is free after."""
        g = self.guest
        if not check:
            g.sh(f"rmmod {self.module}", timeout=timeout)
            self.loaded = False
            return
        held, free = self.quiet_free()
        # Across the unload alone little else moves: a leak of the
        # balloon's pages shows here even where the whole test's drift
        # hides it.
        gained = g.free_gained_by(f"rmmod {self.module}", timeout=timeout, free=free)
        self.loaded = False
        assert gained * PAGE > held * PAGE - 4 * MiB - held * PAGE // 256, (
            f"{held} pages in the balloon, {gained} free pages gained by unload; "
            f"meanwhile kB: {g.refilled}")

    def quiet_free(self, timeout=120):
        """The balloon's size and the free pages, read when no free page
        report is in flight: the reporting core takes the pages it reports
        off the free lists until the device answers (within its delay, at
        most 50 ms here), and the device counts a request when it sees it.
        Quiet is: the count the same before and after the guest's figures
        were read, and still the same a second later, so that no report was
        in flight while they were read. A guest whose free memory keeps
        moving may report every second or two for a while."""
        g, deadline = self.guest, time.monotonic() + timeout
        if not self.sim.state()["negotiated"] & F_REPORTING:
            return g.vmstat()["nr_balloon_pages"], g.free_pages()
        seen = []
        while True:
            # The count is read before and after the guest's figures: a
            # report that starts in between shows.
            before = self.sim.state()["requests_report"]
            free, held = g.free_pages(), g.vmstat()["nr_balloon_pages"]
            seen.append((before, self.sim.state()["requests_report"], free, held))
            last = seen[-2:]
            if len(last) == 2 and len({c for r in last for c in r[:2]}) == 1:
                return last[0][3], last[0][2]
            assert time.monotonic() < deadline, f"reporting never went quiet: {seen[-6:]}"
            time.sleep(1)

    def finish(self, request, timeout=120, slack=32 * MiB):
        """Unbinds with whatever is in the balloon, checks every page came
        back and the device saw nothing wrong, and deletes the device."""
        if self.loaded:
            self.unload(timeout)
        # A device that answers must never meet the unbind grace period.
        assert "no answer within" not in self.guest.log()[self.log0:]
        st = self.sim.assert_clean()
        assert st["frames_held"] == 0, st
        assert st["frames_inflated"] == st["frames_deflated"], st
        assert st["frames_checked"] >= st["frames_deflated"], st
        save(request, st)
        self.sim.delete(timeout)
        self.assert_pages_back(slack)
        return st

    def assert_pages_back(self, slack=32 * MiB):
        g = self.guest
        assert g.vmstat()["nr_balloon_pages"] == 0
        assert g.meminfo()["MemTotal"] == self.mem0
        # Free memory over the whole test, within `slack`: freed slab objects
        # wait in KASAN's quarantine (counted as slab, up to 1/32 of RAM),
        # page cache and per-CPU lists move about. The exact check of the
        # balloon's pages is the one across the unload.
        free, info = g.free_pages(), g.meminfo()
        slab = (info["Slab"] - self.info0["Slab"]) * 1024 // PAGE
        moved = {k: info[k] - v for k, v in self.info0.items()
                 if k in info and abs(info[k] - v) >= 1024}
        assert abs(free + slab - self.free0) * PAGE < slack, (
            f"free pages {self.free0} -> {free}, slab {slab:+} pages; "
            f"meminfo kB moved: {moved}")


@pytest.fixture
def bound(request, guest):
    made = []

    def make(which, features, delay_us=0):
        b = Bound(guest, which, features, delay_us)
        made.append(b)
        return b

    yield make
    for b in made:
        b.teardown()


# -- parity ------------------------------------------------------------------

@pytest.mark.parametrize("delay", DELAYS.values(), ids=DELAYS.keys())
@pytest.mark.parametrize("which", DRIVERS)
def test_targets_counters_and_unload(request, guest, bound, which, delay):
    """`actual` and the balloon counters follow each target; with
    MUST_TELL_HOST every frame leaves the balloon with its pattern intact;
    unloading with pages in the balloon gives every one back."""
    b = bound(which, F_MUST_TELL_HOST | F_STATS_VQ | F_REPORTING, delay)
    step = 32 * MiB if delay >= 50000 else 256 * MiB
    for size in (step, 2 * step, step // 2):
        st, secs = b.inflate(size)
        print(f"{size // MiB} MiB reached in {secs:.2f} s")
        assert b.mem0 - b.guest.meminfo()["MemTotal"] == size // 1024
        assert st["frames_held"] == frames(size)
    st = b.finish(request)
    # Compaction may migrate balloon pages meanwhile: each is one more.
    assert st["frames_inflated"] >= frames(2 * step)
    assert st["actual"] == 0


@pytest.mark.parametrize("delay", [50000], ids=["50ms"])
@pytest.mark.parametrize("which", DRIVERS)
def test_free_page_reporting(request, guest, bound, which, delay):
    """Freed memory is reported. With statistics on and hinting off the
    reporting queue is the transport's queue 3 but the driver's fifth queue:
    a callback that takes one for the other wakes the wrong waiter, which a
    device that answers later shows as a report that never ends."""
    b = bound(which, F_STATS_VQ | F_REPORTING, delay)
    # Two rounds: a first report can complete even when its answer wakes
    # the wrong waiter (that waiter may still be awake); the second
    # report then never starts while the first one's waiter sleeps.
    for round in (1, 2):
        s0 = b.sim.state()
        guest.sh("dd if=/dev/zero of=/dev/null bs=512M count=1 2>/dev/null", timeout=300)
        st = b.sim.wait(lambda s: s["reported_frames"] >= s0["reported_frames"] + frames(64 * MiB)
                        and s["requests_report"] > s0["requests_report"],
                        f"64 MiB reported in round {round}", 120)
        print(f"round {round}: reported {(st['reported_frames'] - s0['reported_frames']) * FRAME // MiB} MiB")
    b.finish(request, timeout=60)


@pytest.mark.parametrize("which", DRIVERS)
def test_statistics(request, guest, bound, which):
    """The device asks for statistics at its interval and keeps the last
    values; total memory is the guest's MemTotal."""
    b = bound(which, F_STATS_VQ, 1000)
    b.sim.ctl("stats_interval_ms 200")
    st = b.sim.wait(lambda s: s["stats_requests"] >= 3 and s["stats_updates"] >= 4,
                    "three statistics rounds", 60)
    assert st[f"stat_{STAT_MEMTOT}"] == guest.meminfo()["MemTotal"] * 1024
    b.sim.ctl("stats_interval_ms 0")
    b.finish(request)


@pytest.mark.parametrize("which", DRIVERS)
def test_compaction_migrates_balloon_pages(request, guest, bound, which):
    """Compaction migrates balloon pages: each migration inflates the new
    page and deflates the old one, and the old one still holds its pattern.
    No added delay: each migration is two round trips through the worker,
    and tens of thousands of them at 1 ms each would take minutes."""
    b = bound(which, F_MUST_TELL_HOST)
    avail = guest.meminfo()["MemAvailable"] * 1024
    guest.sh(f"fragment {avail * 6 // 10 // MiB} >/tmp/frag.out 2>&1 & "
             "echo $! >/tmp/frag.pid; "
             "while ! grep -q ready /tmp/frag.out; do sleep 0.2; done", timeout=600)
    size = (guest.meminfo()["MemFree"] * 1024 - 256 * MiB) // MiB * MiB
    b.inflate(size, timeout=600)
    guest.sh("kill $(cat /tmp/frag.pid); "
             "while kill -0 $(cat /tmp/frag.pid) 2>/dev/null; do sleep 0.2; done")
    m0, s0 = guest.vmstat()["balloon_migrate"], b.sim.state()
    guest.sh("echo 1 > /proc/sys/vm/compact_memory", timeout=600)
    migrated = guest.vmstat()["balloon_migrate"] - m0
    st = b.sim.assert_clean()
    print(f"balloon pages migrated: {migrated}")
    assert migrated > 0
    assert st["frames_held"] == frames(size)
    assert st["frames_deflated"] - s0["frames_deflated"] >= migrated * PAGE // FRAME
    # The fragmenting process and compaction leave free memory moved about
    # (per-CPU lists, slab): the exact observables are the balloon counters.
    b.finish(request, slack=128 * MiB)


@pytest.mark.parametrize("which", DRIVERS)
def test_free_page_hinting(request, guest, bound, which):
    """A hinting round: the driver answers a new command id with hints of
    free memory, which it keeps until the device says it is done."""
    b = bound(which, F_FREE_PAGE_HINT, 1000)
    free0 = guest.free_pages()
    b.sim.ctl("hint start")
    st = b.sim.wait(lambda s: s["hint_starts"] == 1 and s["hint_stops"] >= 1,
                    "a hinting round", 300)
    print(f"hinted {st['hinted_frames'] * FRAME // MiB} MiB")
    assert st["hinted_frames"] * FRAME >= 256 * MiB
    b.sim.ctl("hint done")
    deadline = time.monotonic() + 60
    while abs(guest.free_pages() - free0) * PAGE > 64 * MiB:
        assert time.monotonic() < deadline, "the hinted memory did not come back"
        time.sleep(0.5)
    b.finish(request)


@pytest.mark.parametrize("which", DRIVERS)
def test_deflate_on_oom(request, guest, bound, which):
    """A hog that needs more than is free completes; the balloon shrinks
    through the deflate queue, telling the host, instead of a kill."""
    b = bound(which, F_MUST_TELL_HOST | F_DEFLATE_ON_OOM, 1000)
    size = (guest.meminfo()["MemAvailable"] * 1024 - 384 * MiB) // MiB * MiB
    b.inflate(size, timeout=600)
    kills = guest.vmstat()["oom_kill"]
    r = guest.run("dirty 512", timeout=900, check=False)
    assert r.rc == 0, f"the hog failed ({r.rc}): {r.out}"
    assert guest.vmstat()["oom_kill"] == kills
    st = b.sim.assert_clean()
    assert st["frames_deflated"] >= frames(64 * MiB), st
    assert st["frames_held"] == guest.vmstat()["nr_balloon_pages"] * PAGE // FRAME
    b.finish(request)


# -- hostile -------------------------------------------------------------------

@pytest.mark.parametrize("which", DRIVERS)
def test_held_buffers_then_released(request, guest, bound, which):
    """The device keeps the inflate buffer for a while: the driver waits,
    does not claim the pages are in the balloon, and goes on once the
    device answers."""
    b = bound(which, F_MUST_TELL_HOST)
    b.sim.ctl("hostile hold inflate")
    b.sim.target(frames(64 * MiB))
    b.sim.wait(lambda s: s["buffers_held"] >= 1, "a held buffer", 60)
    time.sleep(3)
    st = b.sim.state()
    assert st["actual"] == 0 and st["buffers_held"] == 1, st
    b.sim.ctl("release")
    b.sim.wait_actual(frames(64 * MiB))
    b.finish(request)


@pytest.mark.parametrize("which", DRIVERS)
def test_used_length_too_long(request, guest, bound, which):
    """Every answer claims more bytes than the buffer has."""
    b = bound(which, F_MUST_TELL_HOST | F_STATS_VQ)
    b.sim.ctl("hostile long_len all")
    b.sim.ctl("stats_interval_ms 200")
    b.inflate(64 * MiB)
    b.sim.wait(lambda s: s["stats_updates"] >= 3, "statistics", 60)
    b.sim.ctl("stats_interval_ms 0")
    assert b.sim.state()["hostile_answers"] > 0
    b.finish(request)


@pytest.mark.parametrize("which", DRIVERS)
def test_configuration_storm(request, guest, bound, which):
    """20000 configuration changes in a tight loop, ending at the target the
    balloon already had."""
    b = bound(which, F_MUST_TELL_HOST | F_STATS_VQ | F_REPORTING)
    b.inflate(32 * MiB)
    b.sim.ctl("storm 20000")
    b.sim.wait_actual(frames(32 * MiB))
    assert guest.run("echo alive").out == "alive\n"
    b.finish(request)


C_WRAPS = ("towards_target() rounds num_pages up to whole pages in 32 bits: with "
           "64 KiB pages 0xffffffff + 15 wraps, the target becomes 0 and the C "
           "driver never inflates")


@pytest.mark.parametrize("which", DRIVERS)
def test_largest_target_inflates(request, guest, bound, which):
    """num_pages 0xffffffff, the largest target a device can ask, makes the
    balloon grow as far as the guest lets it. Both drivers round the target
    up to whole pages (16 frames with 64 KiB pages); the arm64 lane found
    that C does it in 32 bits, so there C is an expected failure that checks
    what C does: nothing asked of the device in 10 s. The test stops at
    128 MiB: the rest of an absurd target is test_absurd_target's."""
    b = bound(which, F_MUST_TELL_HOST | F_DEFLATE_ON_OOM)
    s0 = b.sim.state()
    b.sim.target(0xffffffff)
    if which == "c" and PAGE > FRAME:
        time.sleep(10)
        st = b.sim.state()
        b.sim.target(0)
        b.finish(request)
        # Once C rounds in 64 bits this fails: then drop the expected failure.
        assert st["actual"] == 0 and st["requests_inflate"] == s0["requests_inflate"], st
        pytest.xfail(C_WRAPS)
    try:
        st = b.sim.wait(lambda s: s["actual"] * FRAME >= 128 * MiB,
                        "128 MiB in the balloon", 60)
        print(f"{st['actual'] * FRAME // MiB} MiB in the balloon")
    finally:
        b.sim.target(0)
    b.sim.wait_actual(0, timeout=120)
    b.finish(request)


@pytest.mark.parametrize("target", ["16TiB", "ram-4KiB"])
@pytest.mark.parametrize("which", DRIVERS)
def test_absurd_target(request, guest, bound, which, target):
    """The device asks for 0xffffffff frames (16 TiB), or for one frame less
    than the guest's RAM. With deflate-on-oom the guest lives on: the balloon
    takes most of the guest's memory, with no OOM kill, and unload gives
    every page back. Then the balloon must have settled: the Rust driver
    stops short of the guest's last memory; the C driver fights the OOM
    notifier (it inflates again, every 200 ms, what deflate-on-oom gave
    back: balloon-reference.md, deflate-on-oom), a strict expected failure.
    (Without deflate-on-oom the C driver starves the guest:
    test_absurd_target.py keeps that on record.)"""
    b = bound(which, F_MUST_TELL_HOST | F_DEFLATE_ON_OOM)
    ram = guest.ram_bytes()
    kills = guest.vmstat()["oom_kill"]
    b.sim.target(0xffffffff if target == "16TiB" else frames(ram) - 1)
    # Grown as far as it goes: settled, or fighting the OOM notifier.
    st, secs = b.sim.wait_settled(
        timeout=600, settle=20,
        stop=lambda s: s["requests_deflate"] > 0 and s["actual"] * FRAME > ram // 2)
    print(f"the balloon reached {st['actual'] * FRAME // MiB} MiB "
          f"of {ram // MiB} MiB in {secs:.0f} s")
    assert st["actual"] * FRAME > ram // 2, st
    t0, window = time.monotonic(), 30
    for _ in range(3):
        assert guest.run("echo alive", timeout=60).out == "alive\n"
    time.sleep(max(0, window - (time.monotonic() - t0)))
    st1 = b.sim.assert_clean()
    assert guest.vmstat()["oom_kill"] == kills
    # With deflate-on-oom ballooned pages stay part of MemTotal.
    assert guest.meminfo()["MemTotal"] == b.mem0
    fought = st1["requests_deflate"] - st["requests_deflate"]
    moved = st1["actual"] - st["actual"]
    print(f"in {window} s after: {fought} deflate requests, actual moved by {moved} frames")
    if which == "c":
        # Its unload, in the middle of that fight, came back 8-10 MiB short
        # of nr_balloon_pages in the last two full runs (ram-4KiB), with
        # no slab, page cache or anonymous memory to account for it: not
        # understood yet, and covered by the same expected failure.
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "the C driver fights deflate-on-oom: it inflates again what the "
            "OOM notifier gave back")))
    b.finish(request, timeout=600)
    assert fought == 0 and moved == 0, (st, st1)


@pytest.fixture(scope="module")
def poison_guest():
    """A guest that poisons freed pages and checks the pattern when it
    hands them out again."""
    g = own_guest("sim-poison", append="page_poison=1")
    yield g
    g.close()


@pytest.mark.parametrize("which", DRIVERS)
def test_reported_pages_keep_the_poison(request, poison_guest, which):
    """With page poisoning the allocator checks every free page's pattern
    when it hands the page out again. A device that discards reported pages
    (this one zeroes them, as a host does) must be told the pattern, which
    needs VIRTIO_BALLOON_F_PAGE_POISON: with it the driver writes
    poison_val and the device keeps the pages' contents; without it the
    driver must not report at all. A reported page that came back zeroed
    would be reported as "pagealloc: memory corruption" when reused (the
    guest log check fails the test)."""
    g = poison_guest
    b = Bound(g, which, F_REPORTING, accepted=0)
    assert b.sim.state()["negotiated"] & (F_REPORTING | F_PAGE_POISON) == 0
    b.finish(request)
    b = Bound(g, which, F_REPORTING | F_PAGE_POISON)
    assert b.sim.state()["poison_val"] == 0xaaaaaaaa
    for round in (1, 2):
        s0 = b.sim.state()
        # Frees 512 MiB to be reported, then takes it back, checking it.
        g.sh("dd if=/dev/zero of=/dev/null bs=512M count=1 2>/dev/null", timeout=300)
        st = b.sim.wait(lambda s: s["reported_frames"] >= s0["reported_frames"] + frames(64 * MiB),
                        f"64 MiB reported in round {round}", 120)
        print(f"round {round}: reported {(st['reported_frames'] - s0['reported_frames']) * FRAME // MiB} MiB")
    g.sh("dd if=/dev/zero of=/dev/null bs=512M count=1 2>/dev/null", timeout=300)
    b.finish(request, timeout=60)


def own_guest(name, append=""):
    return boot(name, balloon=None, append=append, mem=guest_mem(sys.modules[__name__]))


# init_on_free: a page freed while the device still has it is written at
# once, so the pattern check sees any such page.
HOSTILE_APPEND = "init_on_free=1"


@pytest.fixture(scope="module")
def hostile_guest():
    """The guest of the hostile tests that end: one boot for all of them. A
    test in which the driver hangs (the C driver's strict expected failures)
    boots a guest of its own, which it leaves behind."""
    g = own_guest("sim-hostile", append=HOSTILE_APPEND)
    yield g
    g.close()


def hostile(request, name, hangs):
    """The guest for a hostile test: its own if the driver hangs in it."""
    if hangs:
        return own_guest(name, append=HOSTILE_APPEND)
    return request.getfixturevalue("hostile_guest")


@pytest.mark.parametrize("which", DRIVERS)
def test_init_on_free_reports_only_with_page_poison(request, hostile_guest, which):
    """With init_on_free the allocator zeroes every page it frees, and
    VIRTIO_BALLOON_F_PAGE_POISON is how a driver tells the device what free
    pages hold (poison_val 0: any value, the guest zeroes them again): C's
    validate() keeps the bit, and turns reporting off when the device does
    not offer it. Both drivers must negotiate the same bits, tell 0, and
    report."""
    g = hostile_guest
    b = Bound(g, which, F_REPORTING, accepted=0)
    assert b.sim.state()["negotiated"] & (F_REPORTING | F_PAGE_POISON) == 0
    b.finish(request)
    b = Bound(g, which, F_REPORTING | F_PAGE_POISON)
    s0 = b.sim.state()
    assert s0["poison_val"] == 0, s0
    g.sh("dd if=/dev/zero of=/dev/null bs=256M count=1 2>/dev/null", timeout=300)
    b.sim.wait(lambda s: s["reported_frames"] >= s0["reported_frames"] + frames(64 * MiB),
               "64 MiB reported", 120)
    b.finish(request, timeout=60)


@pytest.mark.checks_splats
@pytest.mark.parametrize("mode", ["bad_id", "twice"])
@pytest.mark.parametrize("which", ["c", "rust"])
def test_broken_ring(request, mode, which):
    """The device answers an inflate with an id that was never added, or
    answers a buffer twice. The first the ring sees (it marks itself broken);
    the second it cannot always see: once the driver has added its next
    buffer at the same descriptor, the second answer reads as the answer to
    that one, and the driver goes on before the device has read it (the
    device then counts the guest's next requests as protocol errors, which
    it caused). Either way the guest must live on, and unbind end the wait
    and give every page back; a broken ring's device is reset before any
    page it had is reused (the Rust driver's wait on a broken ring ends
    only then, at unbind)."""
    hangs = which == "c" and mode == "bad_id"
    if hangs:
        request.applymarker(C_HANGS)
    g = hostile(request, f"sim-{mode}-{which}", hangs)
    try:
        log0 = g.log_size()
        b = Bound(g, which, F_MUST_TELL_HOST)
        b.inflate(32 * MiB)
        b.sim.ctl(f"hostile {mode} inflate")
        b.sim.target(frames(64 * MiB))
        b.sim.wait(lambda s: s["hostile_answers"] >= 1, "the bad answer", 60)
        time.sleep(2)
        assert g.run("echo alive").out == "alive\n"
        b.unload(timeout=60)
        # A device that takes no request is not a guest short of memory (the
        # Rust driver said so, and retried every 200 ms, before it stopped
        # resizing on such an error).
        assert "Out of puff" not in g.log()[log0:]
        # The pages came back untold (the ring is broken): the guest's own
        # requests are held to the protocol only where the ring could tell.
        st = b.sim.state()
        if mode == "bad_id":
            # A broken ring is not a stopped device: the driver must have
            # reset it before reusing a page it had lent.
            assert st["protocol_errors"] == 0, st
            assert st["pattern_violations"] == 0, st
        save(request, st)
        b.sim.delete(timeout=60)
        assert g.vmstat()["nr_balloon_pages"] == 0
        assert g.meminfo()["MemTotal"] == b.mem0
        g.sync_log()
        hits = g.splats(log0)
        assert not hits, "\n".join(hits)
    finally:
        if hangs:
            g.close()


@pytest.mark.checks_splats
@pytest.mark.parametrize("which", [pytest.param("c", marks=C_HANGS), "rust"])
def test_dead_device_deleted_while_driver_waits(request, which):
    """The device stops answering (it holds every buffer), then is deleted
    (vdpa dev del, an orderly removal) while the driver waits on it. Unbind
    must finish within a bound, and every page come back. (A surprise
    removal, where the transport breaks the rings before remove, is the
    bad_id case: a broken ring, then unbind.)"""
    hangs = which == "c"
    g = hostile(request, f"sim-vanish-{which}", hangs)
    try:
        log0 = g.log_size()
        # No reporting: a held report's isolated pages would come back at
        # unbind and hide a leak from the count below.
        b = Bound(g, which, F_MUST_TELL_HOST | F_STATS_VQ)
        b.inflate(32 * MiB)
        b.sim.ctl("hostile hold all")
        b.sim.target(frames(64 * MiB))
        b.sim.wait(lambda s: s["buffers_held"] >= 1, "a held buffer", 60)
        held, free = g.vmstat()["nr_balloon_pages"], g.free_pages()
        t0 = time.monotonic()
        b.sim.delete(timeout=30)
        secs = time.monotonic() - t0
        print(f"the device was removed in {secs:.1f} s")
        # The grace period is 5 s, once: the reset device fails the
        # deflates that follow at once.
        assert secs < 20
        assert "no answer within 5000 ms of unbind" in g.log()[log0:]
        assert g.vmstat()["nr_balloon_pages"] == 0
        assert g.meminfo()["MemTotal"] == b.mem0
        gained = g.free_pages() - free
        assert gained * PAGE > held * PAGE - 4 * MiB, (held, gained)
        b.unload(check=False)
        g.sync_log()
        hits = g.splats(log0)
        assert not hits, "\n".join(hits)
    finally:
        if hangs:
            g.close()
