// SPDX-License-Identifier: GPL-2.0

//! Rust virtio memory balloon driver.
//!
//! The host asks for memory through the device's `num_pages`. The driver takes pages from the
//! guest (inflate) or gives them back (deflate), tells the host their frame numbers through the
//! inflate and deflate queues, and reports its size in `actual`. Pages in the balloon stay
//! movable: compaction migrates them through [`Host::migrate`], which tells the host about the
//! new page and the old one.
//!
//! Each optional feature is a part of [`VirtioBalloon`] that exists only when negotiated and
//! whose drop is its teardown: the statistics queue, the OOM notifier, the free page reporting
//! registration, free page hinting (its queue, work, workqueue and shrinker).
//!
//! Power management is the C driver's: freeze gives every page back and deletes the queues,
//! restore creates them and inflates again once the system has thawed; shutdown drops the
//! optional parts and leaves the balloon for the next kernel. The device is wakeup-capable: with
//! `power/wakeup` enabled it keeps the system awake while the balloon moves.
//!
//! # Locking
//!
//! - The inflate queue's ring lock, which the deflate queue shares, serialises every request to
//!   the host, as `balloon_lock` does in C; each of the two queues keeps its frame-number buffer
//!   under it. Migration only try-locks it: inflation may hold it while waiting for memory that
//!   the migration would free.
//! - Resizing runs only in the driver's work item, unbind and freeze, which never run
//!   concurrently (but for a kexec jump, which leaves the work running during freeze, as in C);
//!   the OOM notifier deflates concurrently with them. Each step is one request, under that
//!   lock.
//! - The OOM notifier holds its burst's mutex ([`OomBurst`]) across the requests of a call
//!   (up to 64 of them), so takes it before the ring lock; the work item takes it alone, to read
//!   how much inflation must leave alone.

use core::mem::size_of;

use pin_init::stack_pin_init;

use kernel::{
    balloon::{
        self,
        Migration,
        Pfn,
        FRAMES_4K_PER_PAGE, //
    },
    device::{
        Bound,
        Core, //
    },
    devres::Binding,
    mm::{
        oom,
        page_reporting,
        pages::{
            self,
            Pages, //
        },
        poison,
        shrinker,
        vmstat::{
            self,
            NodeStat,
            VmEvent, //
        }, //
    },
    new_mutex, new_spinlock,
    page::{
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    prelude::*,
    ratelimit::RateLimit,
    sync::{
        atomic::{
            Atomic,
            Full,
            Relaxed, //
        },
        Arc,
        Mutex,
        SpinLock, //
    },
    time::{
        delay::fsleep,
        Delta,
        Instant,
        Monotonic, //
    },
    virtio::{
        self,
        balloon::{
            Config,
            F_DEFLATE_ON_OOM,
            F_FREE_PAGE_HINT,
            F_MUST_TELL_HOST,
            F_PAGE_POISON,
            F_REPORTING,
            F_STATS_VQ, //
        },
        le,
        virtqueue::{
            self,
            QueueGuard, //
        },
        Feature,
        QueueId,
        QueueInfo, //
    },
    workqueue::{
        self,
        QueueFlags,
        ScopedWork, //
    },
};

/// Frame numbers per request: QEMU and other hosts reject more.
const PFNS_PER_REQUEST: usize = 256;
const PAGES_PER_REQUEST: usize = PFNS_PER_REQUEST / FRAMES_4K_PER_PAGE;

type PfnBuffer = KBox<[le::U32; PFNS_PER_REQUEST]>;

/// One statistic (`struct virtio_balloon_stat`).
#[repr(C)]
#[derive(Clone, Copy, Default, FromBytes, IntoBytes)]
struct Stat {
    tag: le::U16,
    val: le::U64,
}

const STATS_NR: usize = 16;
type StatsBuffer = KBox<[Stat; STATS_NR]>;

// The queues, in the device's order, and what they carry.
const INFLATE: QueueId<PfnBuffer> = QueueId::new(0);
const DEFLATE: QueueId<PfnBuffer> = QueueId::new(1);
const STATS: QueueId<StatsBuffer> = QueueId::new(2);
const FREE_PAGE: QueueId<CmdIdBuffer> = QueueId::new(3);
const REPORTING: QueueId<virtqueue::Lent> = QueueId::new(4);

/// Free page hint command ids: the host wants no more hints, or is done with those it has.
const CMD_ID_STOP: u32 = 0;
const CMD_ID_DONE: u32 = 1;

/// Free memory is hinted in blocks of the largest order the allocator has (4 MiB on x86).
const HINT_ORDER: u32 = pages::MAX_ORDER;
const HINT_PAGES: usize = 1 << HINT_ORDER;

type CmdIdBuffer = KBox<le::U32>;

/// The smallest free blocks reported: the core's default (a pageblock) except with 64 KiB pages,
/// whose 512 MiB pageblocks would leave little to report; there, 2 MiB, as the C driver.
const REPORTING_ORDER: Option<u32> = if cfg!(all(CONFIG_ARM64, CONFIG_ARM64_64K_PAGES)) {
    Some(5)
} else {
    None
};

/// What the balloon leaves the guest however much the host asks: 1/128 of its memory, at least
/// 32 MiB. Enough for the guest to stay alive and reclaim to make progress; the C driver has
/// no such floor (known weakness R7).
fn reserve_pages() -> usize {
    let total = vmstat::MemInfo::now().total as usize;
    (total / 128).max((32 << 20) / PAGE_SIZE)
}

/// Pages the OOM notifier gives back on a first call: 1 MiB, as the C driver.
const OOM_PAGES: usize = 256 / FRAMES_4K_PER_PAGE;
/// The most it gives back in one call: 64 MiB.
const OOM_PAGES_MAX: usize = (64 << 20) / PAGE_SIZE;
/// A call within this time of the previous one is the same shortage. Generous: under TCG the
/// faults and the failed reclaim between two calls can take a second or more.
const OOM_BURST: Delta = Delta::from_secs(5);
/// How long what a burst gave back stays out of inflation's reach after its last call.
const OOM_HOLD: Delta = Delta::from_secs(6);

/// The OOM notifier's memory of the current shortage, and of the last ones.
///
/// Each OOM call comes after a full round of failed reclaim: giving 1 MiB per call, as C does,
/// leaves a process that needs hundreds of MiB crawling through hundreds of such rounds. So
/// within a burst of calls each asks twice as much as the one before, up to [`OOM_PAGES_MAX`].
/// What the last call gave beyond the need, at most its own size, inflation takes back once the
/// burst has been over for [`OOM_HOLD`]. Page cache is reclaimed before any OOM call, so
/// memory pressure that reclaim can relieve does not deflate the balloon.
#[derive(Default)]
struct OomBurst {
    /// What the last call asked for.
    pages: usize,
    /// What the burst gave back in all.
    total: usize,
    /// When the last call ended.
    last: Option<Instant<Monotonic>>,
    /// `MemAvailable` above the reserve when the guest last ran out of memory, in pages.
    /// Inflation leaves it alone too; it halves with every minute without an OOM call.
    learned: usize,
}

impl OomBurst {
    /// Pages inflation must leave alone beyond the reserve.
    fn held(&self) -> usize {
        let Some(quiet) = self.last.map(|t| t.elapsed()) else {
            return 0;
        };
        let burst = if quiet < OOM_HOLD { self.total } else { 0 };
        burst + self.learned_now(quiet)
    }

    /// `learned`, halved for every minute of `quiet`.
    fn learned_now(&self, quiet: Delta) -> usize {
        self.learned >> (quiet.as_millis() / 60_000).clamp(0, 63)
    }
}

kernel::virtio_device_table!(
    VIRTIO_BALLOON_TABLE,
    [virtio::DeviceId::new(virtio::DeviceId::BALLOON)]
);

kernel::module_virtio_driver! {
    type: VirtioBalloonDriver,
    name: "rust_virtio_balloon",
    authors: ["Rust balloon contributors"],
    description: "Virtio memory balloon driver written in Rust",
    license: "GPL",
}

/// Queue notifications: the inflate and deflate queues only wake their waiter; the host
/// returning the statistics buffer asks for fresh statistics.
struct Events<'a> {
    dev: &'a virtio::Device<Bound>,
    stats_requested: Atomic<bool>,
}

impl virtqueue::Handler for Events<'_> {
    fn used(&self, queue: usize) {
        if queue == STATS.index() {
            self.stats_requested.store(true, Relaxed);
            self.dev.schedule_work();
        }
    }
}

/// The host side of the balloon: the queues it is told through, and the migration handler.
#[pin_data]
struct Host<'a> {
    #[pin]
    vqs: virtio::Virtqueues<'a, Events<'a>>,
}

impl Host<'_> {
    /// Gives the inflate and deflate queues a frame-number buffer each, where they have none: at
    /// probe, and at restore if the device kept one (a broken device).
    fn provide_buffers(&self) -> Result {
        for queue in [INFLATE, DEFLATE] {
            // Allocated before the lock, which migration must not find held by reclaim.
            let new = KBox::new([le::U32::ZERO; PFNS_PER_REQUEST], GFP_KERNEL)?;
            let mut vq = self.vqs.lock(queue)?;
            let buf = vq.take_spare().unwrap_or(new);
            vq.replace_spare(buf);
        }
        Ok(())
    }

    /// Sends the frames of `pages` on `vq` (inflate or deflate), in its buffer, and waits until
    /// the host has read them.
    fn tell(vq: &mut QueueGuard<'_, PfnBuffer>, pages: impl IntoIterator<Item = Pfn>) -> Result {
        let mut buf = vq.take_spare().ok_or(EIO)?;
        match Self::write_frames(&mut buf[..], pages) {
            Ok(n) => Self::send(vq, buf, n),
            Err(e) => {
                vq.replace_spare(buf);
                Err(e)
            }
        }
    }

    /// Writes the 4 KiB frames of `pages` into `buf`, as many as fit; returns how many.
    fn write_frames(buf: &mut [le::U32], pages: impl IntoIterator<Item = Pfn>) -> Result<usize> {
        let (frames, mut n) = (pages.into_iter().flat_map(Pfn::frames_4k), 0);
        for (entry, frame) in buf.iter_mut().zip(frames) {
            *entry = le::U32::new(u32::try_from(frame)?);
            n += 1;
        }
        Ok(n)
    }

    /// Sends the first `n` frames of `buf` as `tell` does; not generic over the pages. The buffer
    /// is the queue's spare again after, unless the device kept it.
    fn send(vq: &mut QueueGuard<'_, PfnBuffer>, buf: PfnBuffer, n: usize) -> Result {
        if let Err((err, buf)) = vq.add_outbuf(buf, n * size_of::<le::U32>(), GFP_KERNEL) {
            vq.replace_spare(buf);
            return Err(err);
        }
        vq.kick();
        let used = vq.wait_buf()?;
        vq.replace_spare(used.buf);
        Ok(())
    }
}

impl balloon::MigrationHandler for Host<'_> {
    fn migrate(
        &self,
        new: &balloon::NewPage<'_>,
        old: &balloon::OldPage<'_>,
        _mode: balloon::MigrateMode,
    ) -> Migration {
        let Ok(mut inflate) = self.vqs.try_lock(INFLATE) else {
            return Migration::Busy;
        };
        if Host::tell(&mut inflate, [new.pfn()]).is_err() {
            return Migration::Busy;
        }
        // The host has the new page: the old one leaves the balloon whatever happens now.
        if let Ok(mut deflate) = inflate.sibling(DEFLATE) {
            let _ = Host::tell(&mut deflate, [old.pfn()]);
        }
        Migration::Migrated
    }
}

/// The balloon and its device: what the work item, unbind and the OOM notifier share.
#[pin_data]
struct Shared<'a> {
    dev: &'a virtio::Device<Bound>,
    /// Pages of `MemAvailable` the balloon never takes.
    reserve: usize,
    /// Whether the reserve held inflation back since the target was last reached.
    held_back: Atomic<bool>,
    #[pin]
    oom: Mutex<OomBurst>,
    hints: Option<Pin<KBox<Hints>>>,
    /// "Out of puff" repeats every 200 ms while memory is short: as in C, 10 per 5 s.
    #[pin]
    puff: RateLimit,
    #[pin]
    balloon: balloon::Balloon<Host<'a>>,
}

impl Shared<'_> {
    fn host(&self) -> &Host<'_> {
        self.balloon.handler()
    }

    /// The host's target in pages, rounded up to whole pages as in C, so that a target that is
    /// not a multiple of the page size does not make the balloon oscillate.
    fn target(&self) -> usize {
        let frames = kernel::virtio_cread!(self.dev, Config, num_pages).get() as usize;
        frames.div_ceil(FRAMES_4K_PER_PAGE)
    }

    /// Inflates by up to `count` pages; returns how many joined the balloon. Pages are
    /// allocated before taking the lock, so that migration is not held up by reclaim.
    fn fill(&self, count: usize) -> Result<usize> {
        stack_pin_init!(let list = balloon::PageList::new());
        for page in core::iter::from_fn(balloon::BalloonPage::alloc).take(count) {
            list.as_mut().push(page);
        }
        if list.is_empty() {
            return Ok(0);
        }
        Host::tell(&mut self.host().vqs.lock(INFLATE)?, list.pfns())?;
        Ok(self.balloon.enqueue_list(list.as_mut()))
    }

    /// Deflates by up to `count` pages, telling the host first; returns how many left.
    fn leak(&self, count: usize) -> usize {
        stack_pin_init!(let list = balloon::PageList::new());
        // Held across the dequeue, as C holds `balloon_lock`; a queue that cannot be locked (its
        // device frozen) fails the request below, not the deflate.
        let vq = self.host().vqs.lock(DEFLATE);
        let n = self.balloon.dequeue_list(list.as_mut(), count);
        if n != 0 {
            if let Err(e) = vq.and_then(|mut vq| Host::tell(&mut vq, list.pfns())) {
                // The device is gone or broken: the pages are the guest's again either way.
                dev_warn!(self.dev, "deflating {} pages untold: {:?}\n", n, e);
            }
        }
        n
    }

    /// Reports the balloon's size to the host.
    fn update_actual(&self) {
        let frames = (self.balloon.pages() * FRAMES_4K_PER_PAGE) as u32;
        kernel::virtio_cwrite!(self.dev, Config, actual, le::U32::new(frames));
    }

    /// Moves the balloon one request towards the target; returns whether it is not there yet.
    fn step(&self) -> Result<bool> {
        let (target, size) = (self.target(), self.balloon.pages());
        if target > size {
            // The guest keeps its reserve whatever the host asks: the C driver takes every page
            // that frees up until the OOM killer has nothing left to kill.
            let keep = self.reserve + self.oom.lock().held();
            let room = balloon::available_pages().saturating_sub(keep);
            let want = (target - size).min(PAGES_PER_REQUEST).min(room);
            if want == 0 {
                if !self.held_back.xchg(true, Relaxed) {
                    dev_info!(
                        self.dev,
                        "Keeping {} MiB available to the guest: the target is out of reach\n",
                        keep >> (20 - PAGE_SHIFT)
                    );
                }
                fsleep(Delta::from_millis(200));
            } else {
                let got = match self.fill(want) {
                    // Broken, reset or frozen, the device takes no request: retrying would spin.
                    Err(e @ (EIO | ETIMEDOUT | ENODEV)) => return Err(e),
                    got => got.unwrap_or(0),
                };
                if got < want {
                    if self.puff.allow() {
                        dev_info!(self.dev, "Out of puff! Can't get {} pages\n", want - got);
                    }
                    // Let reclaim make progress before trying again, as the C driver does.
                    fsleep(Delta::from_millis(200));
                }
            }
        } else if target < size && self.leak((size - target).min(PAGES_PER_REQUEST)) == 0 {
            // Every page left is isolated for migration; they come back shortly.
            fsleep(Delta::from_millis(1));
        }
        self.update_actual();
        if target <= self.balloon.pages() {
            self.held_back.store(false, Relaxed);
        }
        // A target changed meanwhile schedules the work anyway: no need to read it again.
        Ok(target != self.balloon.pages())
    }

    /// Fills `buf` with fresh statistics and hands it to the host.
    fn send_stats(vq: &mut QueueGuard<'_, StatsBuffer>, mut buf: StatsBuffer) -> Result {
        let bytes = |pages: u64| pages * PAGE_SIZE as u64;
        let ev = vmstat::VmEvents::snapshot();
        let mem = vmstat::MemInfo::now();
        let values = [
            (0, bytes(ev.get(VmEvent::SwapIn))),
            (1, bytes(ev.get(VmEvent::SwapOut))),
            (2, ev.get(VmEvent::MajorFault)),
            (3, ev.get(VmEvent::Fault)),
            (10, ev.get(VmEvent::OomKill)),
            (11, ev.alloc_stalls()),
            (12, bytes(NodeStat::ScanKswapd.get())),
            (13, bytes(NodeStat::ScanDirect.get())),
            (14, bytes(NodeStat::StealKswapd.get())),
            (15, bytes(NodeStat::StealDirect.get())),
            #[cfg(CONFIG_HUGETLB_PAGE)]
            (8, ev.get(VmEvent::HugetlbAlloc)),
            #[cfg(CONFIG_HUGETLB_PAGE)]
            (9, ev.get(VmEvent::HugetlbAllocFail)),
            (4, bytes(mem.free)),
            (5, bytes(mem.total)),
            (6, bytes(balloon::available_pages() as u64)),
            (7, bytes(NodeStat::FilePages.get())),
        ];
        for (stat, (tag, val)) in buf.iter_mut().zip(values) {
            *stat = Stat {
                tag: le::U16::new(tag),
                val: le::U64::new(val),
            };
        }
        vq.add_outbuf(buf, values.len() * size_of::<Stat>(), GFP_KERNEL)
            .map_err(|(e, _)| e)?;
        vq.kick();
        Ok(())
    }

    /// Hands the host fresh statistics: the buffer it returned goes back filled.
    fn answer_stats(&self) -> Result {
        let mut vq = self.host().vqs.lock(STATS)?;
        vq.get_buf()
            .map_or(Ok(()), |used| Self::send_stats(&mut vq, used.buf))
    }
}

impl Shared<'_> {
    /// A round of free page hinting: start id, as many free blocks as there are while the host
    /// wants them, stop id. As in C, errors are only logged: the host ends the round anyway.
    fn hint_round(&self, hints: &Hints) {
        let id = hints.received(self.dev);
        // Nothing allocates under the queue's lock: reclaim may deflate, which locks another.
        let ids = [id, CMD_ID_STOP].map(|id| KBox::new(le::U32::new(id), GFP_KERNEL));
        let (Ok(mut vq), [Ok(start), Ok(stop)]) = (self.host().vqs.lock(FREE_PAGE), ids) else {
            return;
        };
        let send_id = |vq: &mut QueueGuard<'_, CmdIdBuffer>, buf: CmdIdBuffer| -> Result {
            // Command ids the host has read come back as used buffers, and go.
            while vq.get_buf().is_some() {}
            vq.add_outbuf(buf, size_of::<le::U32>(), GFP_NOWAIT)
                .map_err(|(e, _)| e)?;
            vq.kick();
            Ok(())
        };
        hints.active.store(id, Relaxed);
        if let Err(e) = send_id(&mut vq, start) {
            dev_err!(self.dev, "Failed to send a start id, err = {:?}\n", e);
        }
        while hints.active.load(Relaxed) == hints.received(self.dev) {
            while vq.get_buf().is_some() {}
            // Only blocks that are free: no reclaim, no retrying, no reserves, no warning.
            let gfp = __GFP_NORETRY | __GFP_NOWARN | __GFP_NOMEMALLOC;
            let Some(block) = Pages::alloc(gfp, HINT_ORDER) else {
                // Every free block is hinted.
                break;
            };
            // One descriptor stays free for the stop id; a full ring drops the block.
            if vq.num_free() > 1 {
                if let Err(e) = vq.add_hint(&block, GFP_NOWAIT) {
                    dev_err!(self.dev, "Failed to send a free page, err = {:?}\n", e);
                    break;
                }
                vq.kick();
                hints.keep(block);
            }
        }
        if let Err(e) = send_id(&mut vq, stop) {
            dev_err!(self.dev, "Failed to send a stop id, err = {:?}\n", e);
        }
    }
}

/// The hinting work: a new command id starts a round; `CMD_ID_DONE` gives every block back.
impl workqueue::ScopedHandler for Shared<'_> {
    fn run(&self) {
        let Some(hints) = &self.hints else {
            return;
        };
        let received = hints.received(self.dev);
        if received == CMD_ID_DONE {
            hints.give_back(usize::MAX);
        } else if received != CMD_ID_STOP && received != hints.active.load(Relaxed) {
            self.hint_round(hints);
        }
    }
}

/// Hinted blocks are the guest's to take back whenever it needs memory; counted in pages.
impl shrinker::Shrinker for Shared<'_> {
    fn count(&self) -> usize {
        (self.hints.as_ref()).map_or(0, |h| h.held.load(Relaxed) * HINT_PAGES)
    }

    fn scan(&self, nr_to_scan: usize) -> Option<usize> {
        let hints = self.hints.as_ref()?;
        Some(hints.give_back(nr_to_scan.div_ceil(HINT_PAGES)) * HINT_PAGES)
    }
}

impl oom::Handler for Shared<'_> {
    /// `VIRTIO_BALLOON_OOM_NOTIFY_PRIORITY`, as the C driver.
    const PRIORITY: i32 = 80;

    fn out_of_memory(&self) -> usize {
        // Calls are serialised by the OOM path's own lock; this one only orders them against
        // `step()`, which reads what the burst holds.
        let mut burst = self.oom.lock();
        let want = if burst.last.is_some_and(|t| t.elapsed() < OOM_BURST) {
            (burst.pages * 2).min(OOM_PAGES_MAX)
        } else {
            // A new shortage, out of memory with this much still counted available:
            // MemAvailable can overstate what an allocation can get (per-CPU counter drift, file
            // pages counted nearly in full, free memory in another node or zone), and inflating
            // into it would bring this back. Only the first call of a burst learns: later ones
            // would count what the burst itself just gave back.
            let seen = (balloon::available_pages() + OOM_PAGES).saturating_sub(self.reserve);
            let before = burst.last.map_or(0, |t| burst.learned_now(t.elapsed()));
            burst.learned = before
                .max(seen)
                .min(vmstat::MemInfo::now().total as usize / 8);
            burst.total = 0;
            OOM_PAGES
        };
        let mut freed = 0;
        while freed < want {
            match self.leak((want - freed).min(PAGES_PER_REQUEST)) {
                0 => break,
                n => freed += n,
            }
        }
        burst.pages = want;
        burst.total += freed;
        burst.last = Some(Instant::now());
        drop(burst);
        self.update_actual();
        freed
    }
}

impl page_reporting::Reporter for Shared<'_> {
    fn report(&self, pages: &page_reporting::FreePages<'_>) -> Result {
        // The queue is empty (one report at a time), so adding cannot need memory.
        self.host().vqs.lend_and_wait(REPORTING, pages, GFP_NOWAIT)
    }
}

/// The blocks of free memory hinted to the host, which it need not copy while it migrates the
/// guest. They stay out of the guest's use until the host is done (`CMD_ID_DONE`), or reclaim
/// wants them back (the shrinker).
#[pin_data]
struct Hints {
    #[pin]
    blocks: SpinLock<pages::PagesList>,
    /// How many blocks `blocks` holds, for the shrinker to read without the lock.
    held: Atomic<usize>,
    /// The configuration changed: the command id must be read again. The id is read only then,
    /// since the host answers `CMD_ID_STOP` once it has seen the driver start a round.
    read_cmd_id: Atomic<bool>,
    /// The command id last read.
    received: Atomic<u32>,
    /// The command id of the round started last.
    active: Atomic<u32>,
}

impl Hints {
    fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            blocks <- new_spinlock!(pages::PagesList::new(HINT_ORDER)),
            held: Atomic::new(0),
            read_cmd_id: Atomic::new(false),
            received: Atomic::new(CMD_ID_STOP),
            active: Atomic::new(CMD_ID_STOP),
        })
    }

    /// The host's command id, read again if the configuration changed since.
    fn received(&self, dev: &virtio::Device<Bound>) -> u32 {
        if self.read_cmd_id.xchg(false, Full) {
            let id = kernel::virtio_cread!(dev, Config, free_page_hint_cmd_id).get();
            self.received.store(id, Relaxed);
        }
        self.received.load(Relaxed)
    }

    fn keep(&self, block: Pages) {
        if self.blocks.lock().as_mut().push(block).is_ok() {
            self.held.add(1, Relaxed);
        }
    }

    /// Gives up to `count` blocks back to the guest; returns how many.
    fn give_back(&self, count: usize) -> usize {
        // Each block goes back to the allocator as it is dropped, outside the lock.
        (0..count)
            .map_while(|_| self.blocks.lock().as_mut().pop())
            .inspect(|_| _ = self.held.fetch_sub(1, Relaxed))
            .count()
    }
}

impl<'a> Shared<'a> {
    /// Creates the queues and the balloon, and tells the host what freed pages hold.
    fn new(
        dev: &virtio::Device<Core<'_>>,
        binding: Binding<'a, virtio::Device<Bound>>,
    ) -> Result<Arc<Self>> {
        let queues = [
            QueueInfo::new(INFLATE, c"inflate"),
            QueueInfo::new(DEFLATE, c"deflate").locked_with(INFLATE),
            QueueInfo::new(STATS, c"stats").only_if(dev.has_feature(F_STATS_VQ)),
            QueueInfo::new(FREE_PAGE, c"free_page_vq")
                .without_callback()
                .with_hints()
                .only_if(dev.has_feature(F_FREE_PAGE_HINT)),
            QueueInfo::lending(REPORTING, c"reporting_vq").only_if(dev.has_feature(F_REPORTING)),
        ];
        let bound = binding.device();
        let events = Events {
            dev: bound,
            stats_requested: Atomic::new(false),
        };
        let managed = if dev.has_feature(F_DEFLATE_ON_OOM) {
            balloon::ManagedPages::Keep
        } else {
            balloon::ManagedPages::Adjust
        };
        let vqs = virtio::Virtqueues::new(dev, binding, &queues, events);
        let hints = dev
            .has_feature(F_FREE_PAGE_HINT)
            .then(|| KBox::pin_init(Hints::new(), GFP_KERNEL))
            .transpose()?;
        let this = Arc::pin_init(
            try_pin_init!(Shared {
                dev: bound,
                reserve: reserve_pages(),
                held_back: Atomic::new(false),
                oom <- new_mutex!(OomBurst::default()),
                hints,
                puff <- RateLimit::new(c"virtio_balloon"),
                balloon <- balloon::Balloon::new_for(
                    binding,
                    managed,
                    try_pin_init!(Host { vqs <- vqs }? Error),
                ),
            }? Error),
            GFP_KERNEL,
        )?;
        this.host().provide_buffers()?;
        this.prime_stats()?;
        // One descriptor is kept for the stop id.
        if this.hints.is_some() && this.host().vqs.ring_size(FREE_PAGE)? < 2 {
            return Err(ENOSPC);
        }
        Ok(this)
    }

    /// Gives the host its first statistics buffer, which it answers when it first wants
    /// statistics; does nothing without a statistics queue.
    fn prime_stats(&self) -> Result {
        let buf = KBox::new([Stat::default(); STATS_NR], GFP_KERNEL)?;
        let mut vq = match self.host().vqs.lock(STATS) {
            Err(ENOENT) => return Ok(()),
            vq => vq?,
        };
        Self::send_stats(&mut vq, buf)
    }

    /// Gives every page and hinted block back, telling the host, and reports the empty balloon.
    fn deflate_all(&self) {
        if let Some(hints) = &self.hints {
            hints.give_back(usize::MAX);
        }
        while self.balloon.pages() != 0 {
            if self.leak(PAGES_PER_REQUEST) == 0 {
                // Every page left is isolated for migration; they come back shortly.
                fsleep(Delta::from_millis(1));
            }
        }
        self.update_actual();
    }
}

/// The parts that exist only when their feature was negotiated. Dropping them is their
/// teardown.
struct Optional<'a> {
    _reporting: Option<Pin<KBox<page_reporting::Registration<Arc<Shared<'a>>>>>>,
    _oom: Option<Pin<KBox<oom::Registration<Arc<Shared<'a>>>>>>,
    _shrinker: Option<Pin<KBox<shrinker::Registration<Arc<Shared<'a>>>>>>,
}

impl<'a> Optional<'a> {
    fn new(binding: Binding<'a, virtio::Device<Bound>>, core: &Arc<Shared<'a>>) -> Result<Self> {
        let dev = binding.device();
        // The host learns what freed pages hold whenever it can, as in C; reported pages come
        // back with it, or hold nothing the allocator checks (`validate` saw to one of the two).
        let kept =
            virtio::balloon::tell_poison(dev).or_else(page_reporting::ContentsKept::not_needed);
        Ok(Self {
            _oom: boxed_if(dev.has_feature(F_DEFLATE_ON_OOM), || {
                Ok(oom::Registration::new_for(binding, core.clone()))
            })?,
            _reporting: boxed_if(dev.has_feature(F_REPORTING), || {
                let capacity = core.host().vqs.ring_size(REPORTING)?;
                let (register, kept) = (page_reporting::Registration::new, kept.ok_or(EINVAL)?);
                let shared = core.clone();
                Ok(register(binding, shared, capacity, REPORTING_ORDER, kept))
            })?,
            _shrinker: boxed_if(core.hints.is_some(), || {
                let name = c"virtio-balloon";
                Ok(shrinker::Registration::new_for(binding, name, core.clone()))
            })?,
        })
    }
}

/// What `init` makes, pinned in a box, if `wanted`.
fn boxed_if<T, I: PinInit<T, Error>>(
    wanted: bool,
    init: impl FnOnce() -> Result<I>,
) -> Result<Option<Pin<KBox<T>>>> {
    if !wanted {
        return Ok(None);
    }
    Ok(Some(KBox::pin_init(init()?, GFP_KERNEL)?))
}

/// Free page hinting's work, on a queue of its own as in C, so that a round does not hold up
/// resizing.
type Hinting<'a> = ScopedWork<Arc<Shared<'a>>>;

fn new_hinting<'a>(
    binding: Binding<'a, virtio::Device<Bound>>,
    core: &Arc<Shared<'a>>,
) -> Result<Option<Pin<KBox<Hinting<'a>>>>> {
    boxed_if(core.hints.is_some(), || {
        let flags = QueueFlags::PERCPU | QueueFlags::FREEZABLE | QueueFlags::CPU_INTENSIVE;
        let wq = workqueue::WorkQueue::Owned(workqueue::OwnedQueue::new(c"balloon-wq", flags, 0)?);
        Ok(workqueue::new_scoped_work!(for binding, core.clone(), wq, "virtio_balloon_hint"))
    })
}

/// The configuration changed, so may have the command id: run the hinting work, unless it is
/// about to read the id anyway. Runs in atomic context.
fn hint_changed(hinting: &Hinting<'_>, core: &Shared<'_>) {
    if (core.hints.as_ref()).is_some_and(|hints| !hints.read_cmd_id.xchg(true, Full)) {
        hinting.queue();
    }
}

/// The driver data.
#[pin_data]
struct VirtioBalloon<'a> {
    /// Declared first to be dropped first: the registrations use the queues. Shutdown drops
    /// them early, as the C driver unregisters them.
    #[pin]
    optional: Mutex<Option<Optional<'a>>>,
    hinting: Option<Pin<KBox<Hinting<'a>>>>,
    core: Arc<Shared<'a>>,
}

impl<'a> VirtioBalloon<'a> {
    fn new<'c>(
        dev: &'a virtio::Device<Core<'c>>,
        binding: Binding<'a, virtio::Device<Bound>>,
    ) -> impl PinInit<Self, Error> + use<'a, 'c> {
        try_pin_init!(Self {
            core: Shared::new(dev, binding)?,
            optional <- new_mutex!(Some(Optional::new(binding, core)?)),
            hinting: new_hinting(binding, core)?,
            _: {
                // The host may hold the device awake while the balloon moves (`power/wakeup`).
                dev.set_wakeup_capable(true);
                dev.ready();
                // The host may be migrating the guest already.
                if let Some(hinting) = &hinting {
                    hint_changed(hinting, core);
                }
            },
        }? Error)
    }
}

struct VirtioBalloonDriver;

#[vtable]
impl virtio::Driver for VirtioBalloonDriver {
    type Data<'bound> = VirtioBalloon<'bound>;

    const ID_TABLE: virtio::IdTable = &VIRTIO_BALLOON_TABLE;
    const FEATURES: &'static [Feature] = &[
        F_MUST_TELL_HOST,
        F_STATS_VQ,
        F_DEFLATE_ON_OOM,
        F_FREE_PAGE_HINT,
        F_PAGE_POISON,
        F_REPORTING,
    ];

    fn validate(_dev: &virtio::Device, features: &mut virtio::FeatureSet<'_>) -> Result {
        // PFNs, statistics and command ids are written little-endian, which a legacy device
        // reads in the guest's order (C's `cpu_to_virtio32()`): refuse where they differ.
        if cfg!(target_endian = "big") && !features.has(Feature::VERSION_1) {
            return Err(ENODEV);
        }
        // Reported free pages may come back zeroed: only report if the host can be told what
        // free pages must contain, or if it does not matter.
        if !poison::init_on_free() && !poison::poisoning_enabled() {
            features.clear(F_PAGE_POISON);
        } else if !features.has(F_PAGE_POISON) {
            features.clear(F_REPORTING);
        }
        // Page reporting must not allocate while adding buffers; and the balloon gives the
        // host guest-physical frame numbers, not DMA addresses.
        features.clear(Feature::RING_INDIRECT_DESC);
        features.clear(Feature::ACCESS_PLATFORM);
        Ok(())
    }

    fn probe<'bound>(
        dev: &'bound virtio::Device<Core<'_>>,
        binding: Binding<'bound, virtio::Device<Bound>>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        VirtioBalloon::new(dev, binding)
    }

    fn config_changed<'bound>(dev: &'bound virtio::Device<Bound>, this: Pin<&Self::Data<'bound>>) {
        dev.schedule_work();
        if let Some(hinting) = &this.hinting {
            hint_changed(hinting, &this.core);
        }
    }

    fn work<'bound>(dev: &'bound virtio::Device<Bound>, this: Pin<&Self::Data<'bound>>) {
        let events = this.core.host().vqs.handler();
        if events.stats_requested.xchg(false, Relaxed) {
            if let Err(e) = this.core.answer_stats() {
                dev_warn!(dev, "statistics: {:?}\n", e);
            }
        }
        match this.core.step() {
            Ok(true) => _ = dev.schedule_work(),
            Ok(false) => {}
            // A new target schedules the work again.
            Err(e) => dev_warn!(dev, "inflating stopped: {:?}\n", e),
        }
    }

    fn unbind<'bound>(_dev: &'bound virtio::Device<Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        if let Some(hinting) = &this.hinting {
            hinting.disable();
        }
        // Every page goes back, and the host hears of it, before the device is reset.
        this.core.deflate_all();
    }

    fn shutdown<'bound>(_dev: &'bound virtio::Device<Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        // No deflating: the host keeps its target, and the next kernel inflates to it. But no
        // notifier or report may use the device once it is shut down.
        let optional = this.optional.lock().take();
        drop(optional);
        if let Some(hinting) = &this.hinting {
            hinting.disable();
        }
    }

    fn freeze<'bound>(
        dev: &'bound virtio::Device<Core<'_>>,
        this: Pin<&Self::Data<'bound>>,
    ) -> Result {
        // Pages left in the balloon would be lost to a guest that resumes on another host, or
        // after a hibernation image is restored: give them all back first, as the C driver.
        this.core.deflate_all();
        this.core.host().vqs.freeze(dev)
    }

    fn restore<'bound>(
        dev: &'bound virtio::Device<Core<'_>>,
        this: Pin<&Self::Data<'bound>>,
    ) -> Result {
        // The reset forgot what freed pages hold: tell it before reporting can resume (C's
        // driver does not tell it again).
        let _ = virtio::balloon::tell_poison(dev);
        let vqs = &this.core.host().vqs;
        vqs.restore(dev)?;
        // A request the device still held when the queues were deleted took its buffer along.
        this.core.host().provide_buffers()?;
        this.core.prime_stats()?;
        dev.ready();
        this.core.update_actual();
        // Inflate to the target again once the system has thawed, and hint if asked to.
        dev.schedule_work();
        if let Some(hinting) = &this.hinting {
            hint_changed(hinting, &this.core);
        }
        Ok(())
    }
}
