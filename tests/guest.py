# SPDX-License-Identifier: GPL-2.0
"""A QEMU guest for the balloon tests: boot, command channel, QMP, logs.

The guest is x86_64 (q35) or, with RB_ARCH=arm64, arm64 (virt, 64 KiB
pages). Its console (ttyS0, or the PL011's ttyAMA0) goes to a log file; a
second serial port (ttyS1), or a virtio console (hvc0) on arm64, carries the
command agent of tests/guest/agent; QMP listens on a unix socket.
Every wait has a timeout, and QEMU is killed when the Guest is closed, when
the Python process exits, and (PR_SET_PDEATHSIG) when it dies.
"""

import atexit
import base64
import ctypes
import itertools
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

TOP = Path(__file__).resolve().parent.parent
BUILD = TOP / "build"
OUT = BUILD / "out"
RUN = BUILD / "run"

QOM_BALLOON = "/machine/peripheral/balloon0"
MiB = 1 << 20

# The guest's architecture (make check ARCH=...), and the page size its
# kernel is configured with (.config.$ARCH.fragment); every boot checks PAGE
# against the guest's own. The balloon device counts 4 KiB frames whatever
# the page size.
ARCH = os.environ.get("RB_ARCH", "x86_64")
PAGE = {"x86_64": 4096, "arm64": 65536}[ARCH]
FRAME = 4096
KERNEL_IMAGE = {"x86_64": "bzImage", "arm64": "Image"}[ARCH]


def image_dir(flavour):
    """Where a flavour's kernel and initramfs are (scripts/lib.sh's
    flavour_out)."""
    return OUT / (flavour if ARCH == "x86_64" else f"{ARCH}-{flavour}")

# Reports that fail any test when they appear in the guest log.
SPLAT = re.compile(
    r"WARNING:|BUG:|BUG kmalloc|kernel BUG|Oops|general protection fault|"
    r"KASAN|KFENCE|UBSAN|possible recursive locking|circular locking|"
    r"inconsistent lock state|suspicious RCU usage|lock held when returning|"
    r"rcu: INFO:|detected stall|self-detected stall|"
    r"blocked for more than|soft lockup|hard LOCKUP|"
    r"Kernel panic|Call Trace:|cut here|kmemleak: .* new suspected|"
    r"list_add corruption|list_del corruption|page dumped because|"
    r"pagealloc: memory corruption|pagealloc: single bit error"
)


class GuestError(Exception):
    pass


@dataclass
class Result:
    rc: int
    out: str


def _pdeathsig():
    # Take QEMU down with us even when the test process is killed.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setsid()


def accel():
    """tcg unless RB_ACCEL says otherwise or a probe boot proved KVM works."""
    forced = os.environ.get("RB_ACCEL")
    if forced:
        return forced
    host = {"aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    if ARCH != host or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    stamp = RUN / "accel"
    if stamp.exists():
        return stamp.read_text().strip()
    result = "tcg"
    try:
        flavour = "release" if (image_dir("release") / KERNEL_IMAGE).exists() else "debug"
        g = Guest(flavour, mem="512M", smp=1, accel="kvm", name="kvm-probe")
        try:
            g.start(boot_timeout=20)
            result = "kvm"
        finally:
            g.close()
    except Exception:  # any failure of the probe means no KVM
        pass
    RUN.mkdir(parents=True, exist_ok=True)
    stamp.write_text(result + "\n")
    return result


class Guest:
    """One QEMU process and its channels."""

    _ids = itertools.count(1)
    instances = []

    def __init__(self, flavour="debug", mem="4G", smp=2, append="",
                 balloon="", accel=None, name="guest", extra=(),
                 kunit=False, shell=False, machine=None, reboot=False):
        self.flavour = flavour
        self.mem = mem
        self.smp = smp
        self.accel = accel
        self.name = name
        self.dir = RUN / name
        self.console = self.dir / "console.log"
        self.kunit = kunit
        self.shell = shell
        self.machine = machine or ("q35" if ARCH == "x86_64" else "virt")
        self.reboot_ok = reboot
        self.append = append
        self.balloon_opts = balloon
        self.extra = list(extra)
        self.proc = None
        self.qmp_conn = None
        self.agent = None
        self._buf = b""
        Guest.instances.append(self)

    # -- life cycle -------------------------------------------------------

    def command(self):
        img = image_dir(self.flavour)
        for f in (KERNEL_IMAGE, "initramfs.cpio"):
            if not (img / f).exists():
                raise GuestError(f"{img / f} missing: run make {self.flavour} ARCH={ARCH}")
        accel = self.accel or accel_default()
        append = [
            "console=ttyS0" if ARCH == "x86_64" else "console=ttyAMA0",
            "loglevel=7", "panic=-1",
            "kunit.enable=1" if self.kunit else "kunit.enable=0",
            "rb.shell" if self.shell else "",
            self.append,
        ]
        if ARCH == "x86_64":
            # la57=off: with 5-level paging, an interrupt taken while the
            # debug kernel calibrates its delay loop can make KASAN report a
            # wild access to the irq descriptor (seen once in CI, in 7.3.4
            # under TCG); 4-level paging is what these guests are meant to use.
            cpu = "host" if accel == "kvm" else "max,la57=off"
        else:
            # pauth-impdef: TCG computes pointer authentication codes with
            # QEMU's own cheap function instead of QARMA, several times faster.
            cpu = "host" if accel == "kvm" else "max,pauth-impdef=on"
        cmd = [
            f"qemu-system-{'x86_64' if ARCH == 'x86_64' else 'aarch64'}",
            "-accel", accel, "-cpu", cpu,
            "-M", self.machine, "-m", self.mem, "-smp", str(self.smp),
            "-nodefaults", "-display", "none",
            *([] if self.reboot_ok else ["-no-reboot"]),
            "-kernel", str(img / KERNEL_IMAGE), "-initrd", str(img / "initramfs.cpio"),
            "-append", " ".join(a for a in append if a),
            "-qmp", f"unix:{self.dir / 'qmp.sock'},server=on,wait=off",
        ]
        if self.shell:
            cmd += ["-serial", "mon:stdio"]
        else:
            cmd += ["-chardev", f"file,id=con,path={self.console}",
                    "-serial", "chardev:con"]
        cmd += ["-chardev", f"socket,id=agent,path={self.dir / 'agent.sock'},server=on,wait=off"]
        if ARCH == "x86_64":
            cmd += ["-serial", "chardev:agent"]
        else:
            cmd += ["-device", "virtio-serial-pci,id=vser",
                    "-device", "virtconsole,chardev=agent"]
        # q35, whose ACPI PCI routing is a table: the loop in i440fx's _PRT
        # can outlast ACPICA's 30 s loop timeout on a slow KASAN guest, and
        # the device would get no interrupt. The balloon sits behind a PCIe
        # root port so that it can be hot-unplugged.
        bus = []
        if self.machine in ("q35", "virt"):
            cmd += ["-device", "pcie-root-port,id=rp0,chassis=1"]
            bus = ["bus=rp0"]
        if self.balloon_opts is not None:
            opts = ",".join(o for o in ["virtio-balloon-pci", "id=balloon0",
                                        *bus, self.balloon_opts] if o)
            cmd += ["-device", opts]
        return cmd + self.extra

    def start(self, boot_timeout=None):
        self.dir.mkdir(parents=True, exist_ok=True)
        for f in ("qmp.sock", "agent.sock", "console.log"):
            (self.dir / f).unlink(missing_ok=True)
        cmd = self.command()
        (self.dir / "qemu.cmd").write_text(" ".join(cmd) + "\n")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL,
            stdout=open(self.dir / "qemu.log", "wb"), stderr=subprocess.STDOUT,
            preexec_fn=_pdeathsig)
        _live.add(self)
        self._wait_sockets()
        try:
            self.qmp_conn = self._qmp_connect()
            self.agent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.agent.connect(str(self.dir / "agent.sock"))
        except Exception as e:  # QEMU died after creating its sockets
            self.close()
            raise GuestError(f"cannot connect to QEMU: {e!r}; "
                             f"{(self.dir / 'qemu.log').read_text()[-2000:]}") from e
        if boot_timeout is None:
            boot_timeout = 180 if self.flavour == "debug" else 60
        self.wait_ready(boot_timeout)
        page = int(self.sh("awk '/^KernelPageSize/ {print $2; exit}' /proc/self/smaps")) * 1024
        if page != PAGE:
            self.close()
            raise GuestError(f"the {ARCH} guest has {page} B pages, the tests expect {PAGE}")
        return self

    def _qmp_connect(self, tries=3):
        """Connect to QMP. A client that connects while QEMU is still
        starting can be sent the RESUME event of vm_start before the
        greeting (the monitor's OPENED event is handled later, and events
        go to a monitor not yet in capability negotiation): the library
        then fails with a GreetingError. Once the VM runs, a fresh
        connection gets the greeting first."""
        for i in range(tries):
            conn = QEMUMonitorProtocol(str(self.dir / "qmp.sock"))
            try:
                conn.connect(negotiate=True)
                return conn
            except Exception as e:  # the QMP library's errors vary by cause
                try:
                    conn.close()
                except Exception:
                    pass
                if "Greeting" not in repr(e) or i == tries - 1:
                    raise
                time.sleep(0.5)

    def _wait_sockets(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GuestError(f"QEMU exited with {self.proc.returncode}: "
                                 f"{(self.dir / 'qemu.log').read_text()[-2000:]}")
            if (self.dir / "qmp.sock").exists() and (self.dir / "agent.sock").exists():
                return
            time.sleep(0.05)
        raise GuestError("QEMU did not create its sockets")

    def wait_ready(self, timeout, stall=90):
        """Ping the agent until it answers: the guest has booted to /init.
        Fails after timeout, or sooner when the console stays silent for
        stall seconds (a hung boot or KUnit run)."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        size, grew = -1, t0
        while True:
            now = time.monotonic()
            left = deadline - now
            if self.log_size() != size:
                size, grew = self.log_size(), now
            if left <= 0 or (not self.shell and now - grew > stall):
                why = "within %d s" % timeout if left <= 0 else \
                    "and its console was silent for %d s" % stall
                raise GuestError(f"guest did not answer {why}; "
                                 f"console tail:\n{self.log()[-3000:]}")
            try:
                self.run("true", timeout=min(3, left))
                self.boot_time = time.monotonic() - t0
                return
            except TimeoutError:
                continue

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def close(self):
        if self.proc is None:
            return
        if self.alive() and self.qmp_conn is not None:
            try:
                self.qmp_conn.cmd("quit")
            except Exception:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for c in (self.qmp_conn, self.agent):
            try:
                c.close()
            except Exception:
                pass
        _live.discard(self)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- command channel -------------------------------------------------

    def run(self, cmd, timeout=120, check=True):
        """Run a shell command in the guest; return its status and output."""
        if not self.alive():
            raise GuestError("QEMU is not running")
        rid = f"rb{next(self._ids)}"
        b64 = base64.b64encode(cmd.encode()).decode()
        self.agent.sendall(f"\n{rid} {b64} {rid}\n".encode())
        begin = f"@@rb-begin {rid}\n".encode()
        end = re.compile(rf"@@rb-end {rid} (\d+)\n".encode())
        deadline = time.monotonic() + timeout
        while True:
            m = end.search(self._buf)
            if m and begin in self._buf[:m.start()]:
                start = self._buf.index(begin) + len(begin)
                body = self._buf[start:m.start()]
                self._buf = self._buf[m.end():]
                out = base64.b64decode(b"".join(body.split())).decode(errors="replace")
                res = Result(int(m.group(1)), out)
                if check and res.rc != 0:
                    raise GuestError(f"`{cmd}` exited {res.rc}: {out}")
                return res
            left = deadline - time.monotonic()
            if left <= 0 or not self.alive():
                raise TimeoutError(f"`{cmd}` gave no answer within {timeout} s"
                                   + ("" if self.alive() else " (QEMU died)"))
            self.agent.settimeout(min(left, 1.0))
            try:
                data = self.agent.recv(65536)
            except socket.timeout:
                continue
            if not data:
                raise GuestError("agent socket closed")
            self._buf += data

    def reboot(self, timeout=None):
        """Reboot the guest (`reboot -f`: devices are shut down, the kernel
        restarts) and wait for the new one to answer. Needs reboot=True."""
        if not self.reboot_ok:
            raise GuestError("this guest exits on reboot (-no-reboot)")
        start = self.log_size()
        self.agent.sendall(f"\nrbx {base64.b64encode(b'reboot -f').decode()} rbx\n".encode())
        deadline = time.monotonic() + 120
        while "Linux version" not in self.log()[start:]:
            if time.monotonic() > deadline or not self.alive():
                raise GuestError("the guest did not restart; console tail:\n"
                                 + self.log()[-3000:])
            time.sleep(0.2)
        self._buf = b""
        self.wait_ready(timeout or (180 if self.flavour == "debug" else 60))
        return self.log()[start:]

    def sync_log(self, timeout=30):
        """Wait until everything the kernel printed so far is in the log."""
        mark = f"rb-sync-{next(self._ids)}"
        self.run(f"echo {mark} > /dev/kmsg")
        deadline = time.monotonic() + timeout
        while mark not in self.log()[-65536:]:
            if time.monotonic() > deadline:
                raise TimeoutError("console log did not catch up")
            time.sleep(0.05)

    def sh(self, cmd, timeout=120):
        return self.run(cmd, timeout=timeout).out

    # -- guest observables ------------------------------------------------

    def vmstat(self):
        """/proc/vmstat after folding the per-CPU deltas (stat_refresh)."""
        out = self.sh("echo 1 > /proc/sys/vm/stat_refresh; cat /proc/vmstat")
        return {k: int(v) for k, v in (l.split() for l in out.splitlines())}

    def meminfo(self):
        """/proc/meminfo in kB."""
        out = self.sh("cat /proc/meminfo")
        res = {}
        for line in out.splitlines():
            k, v = line.split(":", 1)
            res[k] = int(v.split()[0])
        return res

    def free_pages(self):
        """Free pages, including those parked on the per-CPU lists that
        MemFree leaves out."""
        out = self.sh("grep MemFree /proc/meminfo; grep '^ *count:' /proc/zoneinfo")
        lines = out.splitlines()
        free = int(lines[0].split()[1]) * 1024 // PAGE
        return free + sum(int(l.split()[1]) for l in lines[1:])

    # Where memory freed by a command goes again within it: slab (KASAN's
    # quarantine keeps freed objects' slabs for a while), and, in a guest
    # that was short of memory, the page cache and anonymous pages that
    # reclaim had taken and that the freed memory lets back in.
    REFILLED = ("Slab", "Cached", "Buffers", "AnonPages", "PageTables")

    def free_gained_by(self, cmd, timeout=120, free=None):
        """Runs `cmd`; returns the free pages it gained since `free` (read now
        if not given), counting what REFILLED took meanwhile as freed. A page
        the command should free and does not is in none of these, so it
        shows. The kB each of them moved is left in `self.refilled`."""
        free = self.free_pages() if free is None else free
        before = self.meminfo()
        self.sh(cmd, timeout=timeout)
        after = self.meminfo()
        self.refilled = {k: after[k] - before[k] for k in self.REFILLED}
        return (self.free_pages() - free
                + sum(self.refilled.values()) * 1024 // PAGE)

    # -- QMP ---------------------------------------------------------------

    def qmp(self, cmd, **args):
        try:
            r = self.qmp_conn.cmd(cmd, args or None)
        except Exception as e:  # the QMP library's errors vary by cause
            raise GuestError(f"QMP {cmd}: {e!r}"
                             + ("" if self.alive() else " (QEMU died)")) from e
        if "error" in r:
            raise QMPError(r["error"])
        return r["return"]

    def ram_bytes(self):
        return self.qmp("query-memory-size-summary")["base-memory"]

    def balloon_devices(self):
        """The sysfs directories of the virtio balloons on the bus (device id
        5; the arm64 guest has a virtio console beside them)."""
        out = self.sh("grep -l 0x0005 /sys/bus/virtio/devices/*/device 2>/dev/null || true")
        return [d.removesuffix("/device") for d in out.split()]

    def balloon_features(self):
        """The bound balloon's feature bits as the virtio core shows them
        (/sys/bus/virtio/devices/*/features), bit 0 first."""
        devs = self.balloon_devices()
        assert len(devs) == 1, devs
        return self.sh(f"cat {devs[0]}/features").strip()

    def actual(self):
        return self.qmp("query-balloon")["actual"]

    def balloon(self, target):
        self.qmp("balloon", value=target)

    def wait_actual(self, target, timeout, settle=None):
        """Wait until QMP `actual` equals target; with settle, until it has
        stopped moving for that many seconds. Returns (actual, seconds)."""
        t0 = time.monotonic()
        last, last_change = None, t0
        while True:
            now = time.monotonic()
            a = self.actual()
            if a != last:
                last, last_change = a, now
            if a == target:
                return a, now - t0
            if settle is not None and now - last_change >= settle:
                return a, last_change - t0
            if now - t0 > timeout:
                raise TimeoutError(f"balloon actual {a >> 20} MiB did not reach "
                                   f"{target >> 20} MiB within {timeout} s")
            if not self.alive():
                raise GuestError("QEMU died while waiting for the balloon")
            time.sleep(0.02)

    def guest_stats(self):
        return self.qmp("qom-get", path=QOM_BALLOON, property="guest-stats")

    def set_stats_interval(self, seconds):
        self.qmp("qom-set", path=QOM_BALLOON,
                 property="guest-stats-polling-interval", value=seconds)

    # -- log -----------------------------------------------------------------

    def log(self):
        try:
            return self.console.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self):
        try:
            return self.console.stat().st_size
        except FileNotFoundError:
            return 0

    def ignore_splats_before(self, offset):
        """Reports before this log offset were provoked on purpose."""
        self._ignore_before = offset

    def splats(self, since=0):
        """Lines of the console log (from byte offset since) that report a
        kernel warning or error, each with a little context."""
        since = max(since, getattr(self, "_ignore_before", 0))
        try:
            text = self.console.read_bytes()[since:].decode(errors="replace")
        except FileNotFoundError:
            text = ""
        lines = text.splitlines()
        hits = []
        for i, line in enumerate(lines):
            if SPLAT.search(line):
                hits.append("\n".join(lines[max(0, i - 2):i + 12]))
                if len(hits) >= 3:
                    break
        return hits


class QMPError(Exception):
    def __init__(self, err):
        super().__init__(f"{err.get('class')}: {err.get('desc')}")
        self.qmp_class = err.get("class")


_live = set()
_accel = None


def accel_default():
    global _accel
    if _accel is None:
        _accel = accel()
    return _accel


def _cleanup():
    for g in list(_live):
        g.close()


atexit.register(_cleanup)
