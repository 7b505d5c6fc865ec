# SPDX-License-Identifier: GPL-2.0
"""make bench: the C and the Rust virtio-balloon driver in one boot of the
release kernel, loaded in turn (alternating which goes first) on the same
targets. Prints a table of medians with their spread and the ratio Rust/C,
and writes build/bench/bench.json and build/bench/balloon-size.png."""

import argparse
import json
import re
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from guest import MiB, PAGE, Guest  # noqa: E402
from test_absurd_target import hog_from_a_big_balloon  # noqa: E402

TOP = Path(__file__).resolve().parent.parent
OUT = TOP / "build" / "bench"
MODULES = {"c": "virtio_balloon", "rust": "rust_virtio_balloon"}
STEP = 64 * MiB

# Row key -> (label, unit, True if more is better, None for what explains
# other rows).
ROWS = {
    "inflate": ("inflate", "MiB/s", True),
    "deflate": ("deflate", "MiB/s", True),
    "step": (f"QMP balloon -> actual, {STEP // MiB} MiB step", "s", False),
    "migrated": ("balloon pages migrated per compaction", "pages", True),
    "migrate_rate": ("balloon pages migrated per second", "pages/s", True),
    "ballooned": ("balloon pages when compaction starts", "pages", None),
    "compact_secs": ("compaction run", "s", None),
    "failed": ("page migrations that failed (pgmigrate_fail)", "pages", None),
    "irqs_per_page": ("virtio interrupts per balloon page migrated", "irqs", None),
    "rate_irq_mode": ("  pages/s in repetitions with >= 1 interrupt per page", "pages/s", None),
    "rate_poll_mode": ("  pages/s in repetitions with < 1 interrupt per page", "pages/s", None),
    "migrate_scanned": ("compact_migrate_scanned", "pages", None),
    "free_scanned": ("compact_free_scanned", "pages", None),
    "isolated": ("compact_isolated (a migration refused with EAGAIN isolates again)", "pages",
                 None),
    "busy_secs": ("guest CPU time busy during compaction (both CPUs)", "s", None),
    "prof_migrate_us": ("  balloon_page_migrate() (the driver's callback inside), per call", "us",
                        False),
    "prof_notify_us": ("  vp_notify() (the exit to the host; TCG's device answers and "
                       "interrupts inside it), per call", "us", None),
    "prof_share": ("  share of compact_zone() time in balloon_page_migrate()", "", None),
    "prof_kicks": ("  virtqueue_kick() calls per balloon page migrated", "calls", None),
    "prof_get_bufs": ("  virtqueue_get_buf() calls per balloon page migrated", "calls", None),
    "prof_irqs": ("  vring_interrupt() calls per balloon page migrated", "calls", None),
    "oom_secs": ("hog gets 50 % of RAM from a 90 % balloon (deflate-on-oom, 1 GiB guest)",
                 "s", False),
    "oom_calls": ("  OOM rounds meanwhile (out_of_memory() calls)", "calls", None),
    "oom_deflated": ("  deflated meanwhile (balloon_deflate)", "MiB", None),
    "oom_shrunk": ("  balloon smaller 8 s after, the hog still holding its memory", "MiB",
                   False),
    "coresize": ("module size in memory (/sys/module/*/coresize)", "bytes", False),
    "ko": ("module file size (.ko)", "bytes", False),
    "text": ("  text (core: all but .init)", "bytes", None),
    "rodata": ("  .rodata", "bytes", None),
    "orc": ("  ORC unwind tables (read-only data in memory)", "bytes", None),
    "data": ("  .data and .bss", "bytes", None),
    "kallsyms": ("  kallsyms kept for the core text (symtab + names, estimate)", "bytes",
                 None),
    "functions": ("  functions in the core text", "symbols", None),
}


def sections(ko):
    """What the module loader lays out for `ko`'s core: the bytes of its text,
    read-only data, data, and of the symbol table it keeps for kallsyms
    (layout_symtab(): one Elf64_Sym, the name and a type byte for symbol 0 and
    for each symbol in an allocated executable section that is not .init; the
    release kernel has no CONFIG_KALLSYMS_ALL, and with CONFIG_MODULE_UNLOAD
    .exit is core). Read from the ELF file itself; alignment padding is left
    out."""
    b = ko.read_bytes()
    shoff, = struct.unpack_from("<Q", b, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", b, 0x3A)
    shdrs = [struct.unpack_from("<IIQQQQIIQQ", b, shoff + i * shentsize) for i in range(shnum)]
    names = shdrs[shstrndx][4]

    def name(off, base):
        return b[base + off:b.index(b"\0", base + off)].decode()

    SHF_ALLOC, SHF_EXECINSTR, SHT_SYMTAB = 2, 4, 2
    out = {"text": 0, "rodata": 0, "orc": 0, "data": 0, "kallsyms": 0, "functions": 0}
    init = set()
    for i, (nm, typ, flags, _, off, size, link, *_rest) in enumerate(shdrs):
        sec = name(nm, names)
        if sec.startswith(".init"):
            init.add(i)
        elif flags & SHF_ALLOC and flags & SHF_EXECINSTR:
            out["text"] += size
        elif flags & SHF_ALLOC and sec.startswith(".rodata"):
            out["rodata"] += size
        elif sec.startswith(".orc_unwind"):
            out["orc"] += size
        elif flags & SHF_ALLOC and sec.startswith((".data", ".bss")):
            out["data"] += size
    for nm, typ, flags, _, off, size, link, *_rest in shdrs:
        if typ != SHT_SYMTAB:
            continue
        strs = shdrs[link][4]
        out["kallsyms"] += 24 + 2  # symbol 0, always kept
        for k in range(size // 24):
            st_name, st_info, _, st_shndx = struct.unpack_from("<IBBH", b, off + k * 24)
            if not st_name or st_shndx == 0 or st_shndx >= shnum or st_shndx in init:
                continue
            flags = shdrs[st_shndx][2]
            if flags & SHF_ALLOC and flags & SHF_EXECINSTR:
                out["kallsyms"] += 24 + len(name(st_name, strs)) + 2
                out["functions"] += st_info & 0xF == 2
    return out


def move(g, target, trace, t_base, timeout=300):
    """Set the target and poll `actual` until it is reached; returns the
    seconds taken and appends (time, MiB) samples to trace."""
    g.balloon(target)
    t0 = time.monotonic()
    while True:
        now = time.monotonic()
        a = g.actual()
        trace.append((now - t_base, a / MiB))
        if a == target:
            return now - t0
        if now - t0 > timeout:
            raise TimeoutError(f"actual {a // MiB} MiB, target {target // MiB} MiB")
        time.sleep(0.005)


def queue_irqs(g):
    """Interrupts taken so far on the lines of the balloon, the guest's one
    virtio device (per-queue MSI-X vectors, or one shared line)."""
    total = 0
    for line in g.run("cat /proc/interrupts").out.splitlines():
        if "virtio" in line:
            total += sum(int(f) for f in line.split()[1:] if f.isdigit())
    return total


def cpu_busy(g):
    """Seconds the guest's CPUs spent other than idle, from /proc/stat."""
    fields = [int(x) for x in g.run("head -1 /proc/stat").out.split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / 100


def settled_free(g, timeout=30):
    """MemFree in bytes once two readings half a second apart agree within
    4 MiB: freed pages reach the free lists a little after `fragment` says
    it is ready, and a target computed from an earlier reading can leave the
    guest less than the margin (once, fragment was OOM-killed)."""
    t0 = time.monotonic()
    last = g.meminfo()["MemFree"] * 1024
    while True:
        time.sleep(0.5)
        free = g.meminfo()["MemFree"] * 1024
        if abs(free - last) < 4 * MiB:
            return min(free, last)
        if time.monotonic() - t0 > timeout:
            print(f"    warning: MemFree still moving after {timeout} s "
                  f"({last // MiB} -> {free // MiB} MiB); using the lower")
            return min(free, last)
        last = free


# The function profiler (tracefs trace_stat/function*, release kernel only):
# C functions on the migration path that both drivers go through. Rust code
# has no ftrace entry hooks, so the Rust callback is seen through its C caller,
# balloon_page_migrate(), as the C callback is.
TRACING = "/sys/kernel/tracing"
PROFILED = ("compact_zone", "balloon_page_migrate", "virtqueue_kick", "vp_notify",
            "virtqueue_get_buf", "vring_interrupt")
PROFILE_LINE = re.compile(r"^\s*(\S+)\s+(\d+)\s+([\d.]+) us")


def profile_start(g):
    """Resets and starts the function profiler on exactly PROFILED; returns
    False, with a warning, on a kernel without it."""
    g.run(f"test -e {TRACING}/function_profile_enabled || "
          f"mount -t tracefs nodev {TRACING}", check=False)
    if g.run(f"test -e {TRACING}/function_profile_enabled", check=False).rc != 0:
        print("    warning: no function profiler in this kernel: no prof_* rows")
        return False
    # One name per write: ftrace refuses a write naming a function it cannot
    # trace, and an empty filter would profile every function.
    g.sh(f"echo > {TRACING}/set_ftrace_filter && "
         + " && ".join(f"echo {f} >> {TRACING}/set_ftrace_filter" for f in PROFILED))
    # A function of a module reads back as "name [module]".
    got = {line.split()[0] for line in g.sh(f"cat {TRACING}/set_ftrace_filter").splitlines()
           if line.strip()}
    if got != set(PROFILED):
        raise RuntimeError(f"set_ftrace_filter is {sorted(got)}, not {sorted(PROFILED)}")
    g.sh(f"echo 1 > {TRACING}/function_profile_enabled")
    return True


def profile_stop(g):
    """Stops the profiler; returns {function: (calls, microseconds)} summed
    over the CPUs. A function's time is wall time from entry to return: with
    graph-time and sleep-time on (the defaults) it includes its callees',
    interrupts taken meanwhile, and any sleep (balloon_page_migrate() waiting
    for the host). Compaction runs pinned to CPU 0, so no call returns on
    another CPU than it entered."""
    g.sh(f"echo 0 > {TRACING}/function_profile_enabled")
    totals = {f: (0, 0.0) for f in PROFILED}
    out = g.sh(f"cat {TRACING}/trace_stat/function*")
    for line in out.splitlines():
        m = PROFILE_LINE.match(line)
        if m and m.group(1) in totals:
            calls, us = totals[m.group(1)]
            totals[m.group(1)] = (calls + int(m.group(2)), us + float(m.group(3)))
    return totals


def pin_to_cpu0(g):
    """Routes the virtio interrupts to CPU 0. Compaction runs there too
    (taskset): where the interrupt lands relative to the compacting CPU
    decides whether the device interrupts about twice per migrated page or
    far less (interrupts for the other CPU coalesce while it is busy), and
    that decided most of a repetition's rate, for either driver."""
    for line in g.run("cat /proc/interrupts").out.splitlines():
        irq = line.split(":", 1)[0].strip()
        if "virtio" in line and irq.isdigit():
            g.run(f"echo 0 > /proc/irq/{irq}/smp_affinity_list", check=False)
            got = g.run(f"cat /proc/irq/{irq}/effective_affinity_list", check=False).out
            if got.strip() != "0":
                print(f"    warning: IRQ {irq} not moved to CPU 0 ({got.strip()!r})")


def compaction(g, ram, profile):
    """The fragmentation recipe of tests/test_balloon.py; returns the balloon
    pages migrated, the seconds compaction took, the balloon's size in pages,
    how many page migrations failed, and what explains the time: interrupts
    per page, the compaction scanners, the CPU time."""
    avail = g.meminfo()["MemAvailable"] * 1024
    g.sh(f"fragment {avail * 6 // 10 // MiB} >/tmp/frag.out 2>&1 & "
         "echo $! >/tmp/frag.pid; while ! grep -q ready /tmp/frag.out; do sleep 0.1; done",
         timeout=300)
    size = (settled_free(g) - 128 * MiB) // MiB * MiB
    g.balloon(ram - size)
    g.wait_actual(ram - size, timeout=300)
    g.sh("kill $(cat /tmp/frag.pid); "
         "while kill -0 $(cat /tmp/frag.pid) 2>/dev/null; do sleep 0.1; done")
    irqs, busy = queue_irqs(g), cpu_busy(g)
    pin_to_cpu0(g)
    before = g.vmstat()
    profiled = profile and profile_start(g)
    t0 = time.monotonic()
    g.sh("taskset -c 0 sh -c 'echo 1 > /proc/sys/vm/compact_memory'", timeout=600)
    secs = time.monotonic() - t0
    prof = profile_stop(g) if profiled else {}
    after = g.vmstat()
    irqs, busy = queue_irqs(g) - irqs, cpu_busy(g) - busy
    g.balloon(ram)
    g.wait_actual(ram, timeout=300)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    migrated = delta["balloon_migrate"]
    nan = float("nan")

    def per_call(f):
        calls, us = prof.get(f, (0, 0.0))
        return us / calls if calls else nan

    def per_page(f):
        calls = prof.get(f, (0, 0.0))[0]
        return calls / migrated if calls and migrated else nan

    zone_us = prof.get("compact_zone", (0, 0.0))[1]
    breakdown = {"prof_migrate_us": per_call("balloon_page_migrate"),
                 "prof_notify_us": per_call("vp_notify"),
                 "prof_share": prof["balloon_page_migrate"][1] / zone_us if zone_us else nan,
                 "prof_kicks": per_page("virtqueue_kick"),
                 "prof_get_bufs": per_page("virtqueue_get_buf"),
                 "prof_irqs": per_page("vring_interrupt")}
    return {**breakdown, "migrated": migrated, "compact_secs": secs,
            "ballooned": before["nr_balloon_pages"], "failed": delta["pgmigrate_fail"],
            "irqs_per_page": irqs / migrated if migrated else nan,
            "migrate_scanned": delta.get("compact_migrate_scanned", 0),
            "free_scanned": delta.get("compact_free_scanned", 0),
            "isolated": delta.get("compact_isolated", 0),
            "busy_secs": busy}


def run_driver(g, drv, size, ram, results, traces, t_base, profile):
    module = MODULES[drv]
    g.sh(f"insmod /modules/{module}.ko")
    r = results[drv]
    r["coresize"].append(int(g.run(f"cat /sys/module/{module}/coresize").out))
    ko = TOP / "build/out/release" / f"{module}.ko"
    r["ko"].append(ko.stat().st_size)
    for key, value in sections(ko).items():
        r[key].append(value)
    trace = []
    secs = move(g, ram - size, trace, t_base)
    r["inflate"].append(size / MiB / secs)
    r["step"].append(move(g, ram - size - STEP, trace, t_base))
    secs = move(g, ram, trace, t_base)
    r["deflate"].append((size + STEP) / MiB / secs)
    traces[drv].append(trace)
    c = compaction(g, ram, profile)
    for key, value in c.items():
        r[key].append(value)
    r["migrate_rate"].append(c["migrated"] / c["compact_secs"])
    # Unpinned, migration was bimodal under TCG, for both drivers: in some
    # repetitions the device interrupted about twice per page, in others far
    # less, and the mode decided most of a repetition's rate. pin_to_cpu0()
    # keeps every repetition in the first mode; the rows per mode stay to show
    # it (NaN where a mode is not this repetition's). A repetition that
    # migrated nothing has no mode: it is in neither row.
    nan = float("nan")
    rate, per_page = r["migrate_rate"][-1], c["irqs_per_page"]
    irq_mode = per_page >= 1
    r["rate_irq_mode"].append(rate if irq_mode else nan)
    r["rate_poll_mode"].append(rate if per_page == per_page and not irq_mode else nan)
    g.sh(f"rmmod {module}")
    assert g.vmstat()["nr_balloon_pages"] == 0, "pages left after rmmod"


# What a compaction run measures; cleared for a run that did not happen.
COMPACTION_KEYS = ("migrated", "migrate_rate", "compact_secs", "failed", "irqs_per_page",
                   "rate_irq_mode", "rate_poll_mode", "migrate_scanned", "free_scanned",
                   "isolated", "busy_secs", "prof_migrate_us", "prof_notify_us",
                   "prof_share", "prof_kicks", "prof_get_bufs", "prof_irqs")


def oom_phase(reps, results):
    """The deflate-on-OOM rows, in a guest of their own (1 GiB, deflate-on-oom):
    test_absurd_target.hog_from_a_big_balloon per driver and repetition, with
    ftrace's function profiler counting out_of_memory() calls."""
    g = Guest("release", mem="1G", balloon="deflate-on-oom=on", name="bench-oom")
    print(f"==> booting the deflate-on-OOM guest (console: {g.console.relative_to(Path.cwd())})")
    try:
        g.start()
        ram = g.ram_bytes()
        g.run(f"test -e {TRACING}/function_profile_enabled || "
              f"mount -t tracefs nodev {TRACING}", check=False)
        prof = g.run(f"echo out_of_memory > {TRACING}/set_ftrace_filter", check=False).rc == 0
        if not prof:
            print("    warning: no function profiler in this kernel: no oom_calls row")
        for rep in range(reps):
            for drv in (("c", "rust") if rep % 2 == 0 else ("rust", "c")):
                print(f"==> deflate-on-OOM {rep + 1}/{reps}: {MODULES[drv]}")
                g.sh(f"insmod /modules/{MODULES[drv]}.ko")
                if prof:
                    g.sh(f"echo 0 > {TRACING}/function_profile_enabled; "
                         f"echo 1 > {TRACING}/function_profile_enabled")
                f = hog_from_a_big_balloon(g)
                if prof:
                    g.sh(f"echo 0 > {TRACING}/function_profile_enabled")
                    calls = sum(int(m.group(2)) for m in map(
                        PROFILE_LINE.match, g.sh(f"cat {TRACING}/trace_stat/function*")
                        .splitlines()) if m and m.group(1) == "out_of_memory")
                    results[drv]["oom_calls"].append(calls)
                assert f["oom_kills"] == 0, f"{drv}: an OOM kill"
                results[drv]["oom_secs"].append(f["secs"])
                results[drv]["oom_deflated"].append(f["deflated"] / MiB)
                results[drv]["oom_shrunk"].append(f["shrunk"] / MiB)
                g.balloon(ram)
                g.wait_actual(ram, timeout=300)
                g.sh(f"rmmod {MODULES[drv]}")
        splats = g.splats()
    finally:
        g.close()
    if splats:
        sys.exit("kernel report in the deflate-on-OOM guest's log:\n" + "\n".join(splats))


def drop_broken_compactions(results):
    """A compaction that migrated under a quarter of the median, for either
    driver, did not run on the fragmented layout (once, C's migrated 6747
    pages against about 140000: the scanners had found almost nothing). Its
    figures would skew the medians: warn and leave it out of every
    compaction row."""
    nan = float("nan")
    everything = [x for d in MODULES for x in results[d]["migrated"]]
    floor = statistics.median(everything) / 4 if everything else 0
    for drv in MODULES:
        for i, migrated in enumerate(results[drv]["migrated"]):
            if migrated < floor:
                print(f"    warning: {MODULES[drv]} repetition {i + 1} migrated {migrated} "
                      f"pages (median {floor * 4:.0f}): left out of the compaction rows")
                for key in COMPACTION_KEYS:
                    results[drv][key][i] = nan


def summarise(results):
    rows = []
    for key, (label, unit, more_is_better) in ROWS.items():
        # NaN marks a repetition a row does not apply to (the other mode).
        vals = {d: [x for x in results[d][key] if x == x] or [float("nan")] for d in MODULES}
        med = {d: statistics.median(vals[d]) for d in MODULES}
        spread = {d: (min(vals[d]), max(vals[d])) for d in MODULES}
        ratio = med["rust"] / med["c"] if med["c"] else float("nan")
        if more_is_better is None:
            worse = False
        else:
            worse = ratio < 0.95 if more_is_better else ratio > 1.05
        rows.append({"row": key, "label": label, "unit": unit,
                     "more_is_better": more_is_better, "median": med,
                     "n": {d: sum(1 for x in results[d][key] if x == x) for d in MODULES},
                     "spread": spread, "ratio_rust_c": ratio,
                     "rust_worse": worse})
    return rows


def no_nan(x):
    """`x` with every NaN in it replaced by None."""
    if isinstance(x, dict):
        return {k: no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [no_nan(v) for v in x]
    return None if isinstance(x, float) and x != x else x


def fmt(x):
    if x != x:
        return "-"
    return f"{x:.3g}" if isinstance(x, float) and x < 100 else f"{x:.0f}"


def print_table(rows, reps, size):
    print(f"\n{reps} repetition(s), {size // MiB} MiB balloon; median [min-max]; "
          "ratio Rust/C (rows marked * are worse for Rust by over 5 %)")
    head = ("row", "unit", "C", "Rust", "Rust/C")
    body = []
    for r in rows:
        cells = [f"{fmt(r['median'][d])} [{fmt(r['spread'][d][0])}-{fmt(r['spread'][d][1])}]"
                 if r["median"][d] == r["median"][d] else "-" for d in ("c", "rust")]
        if r["row"].startswith("rate_"):
            cells = [f"{c} (n={r['n'][d]})" for c, d in zip(cells, ("c", "rust"))]
        body.append((r["label"], r["unit"], *cells,
                     "-" if r["ratio_rust_c"] != r["ratio_rust_c"] else
                     f"{r['ratio_rust_c']:.2f}{' *' if r['rust_worse'] else ''}"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    for line in (head, *body):
        print("  " + "  ".join(str(x).ljust(w) for x, w in zip(line, widths)))


def plot(traces, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for drv, colour in (("c", "tab:blue"), ("rust", "tab:orange")):
        for i, trace in enumerate(traces[drv]):
            t0 = trace[0][0]
            ax.plot([t - t0 for t, _ in trace], [a for _, a in trace], color=colour,
                    alpha=0.8 if i == 0 else 0.3,
                    label=f"{MODULES[drv]}" if i == 0 else None)
    ax.set_xlabel("seconds since the first target was set")
    ax.set_ylabel("QMP actual (MiB)")
    ax.set_title("Balloon size over time: inflate, one step, deflate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--mem", default="4G")
    ap.add_argument("--only-oom", action="store_true",
                    help="run only the deflate-on-OOM rows")
    ap.add_argument("--profile", action="store_true",
                    help="run ftrace's function profiler during compaction (the prof_* "
                    "rows); it slows compaction, so the timing rows are not comparable "
                    "with a run without it")
    args = ap.parse_args()
    size = args.size_mib * MiB

    OUT.mkdir(parents=True, exist_ok=True)
    g = Guest("release", mem=args.mem, name="bench")
    print(f"==> booting the guest (console: {g.console.relative_to(Path.cwd())})")
    results = {d: {k: [] for k in ROWS} for d in MODULES}
    traces = {d: [] for d in MODULES}
    try:
        g.start()
        ram = g.ram_bytes()
        for rep in range(0 if args.only_oom else args.reps):
            order = ("c", "rust") if rep % 2 == 0 else ("rust", "c")
            for drv in order:
                print(f"==> repetition {rep + 1}/{args.reps}: {MODULES[drv]}")
                run_driver(g, drv, size, ram, results, traces, time.monotonic(),
                           args.profile)
        splats = g.splats()
    finally:
        g.close()
    if splats:
        sys.exit("kernel report in the guest log:\n" + "\n".join(splats))
    oom_phase(args.reps, results)

    drop_broken_compactions(results)
    rows = summarise(results)
    print_table(rows, args.reps, size)
    # NaN is not JSON: a value that does not apply is null.
    (OUT / "bench.json").write_text(json.dumps(no_nan(
        {"guest_ram_mib": ram // MiB, "balloon_mib": size // MiB, "page": PAGE,
         "reps": args.reps, "rows": rows, "samples": results}), indent=1, allow_nan=False))
    plot(traces, OUT / "balloon-size.png")
    print(f"\n==> {(OUT / 'bench.json').relative_to(TOP)}, "
          f"{(OUT / 'balloon-size.png').relative_to(TOP)}")


if __name__ == "__main__":
    main()
