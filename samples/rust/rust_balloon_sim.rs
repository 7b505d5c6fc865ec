// SPDX-License-Identifier: GPL-2.0

//! A memory balloon with no hypervisor behind it.
//!
//! The balloon's size is set from inside the guest, through debugfs, and its pages go through
//! the balloon core like those of any balloon driver: they are counted in `/proc/vmstat`
//! (`nr_balloon_pages`, `balloon_inflate`, `balloon_deflate`), leave `MemTotal`, and
//! compaction migrates them (`balloon_migrate`). The "host" agrees to every migration unless
//! told otherwise. It is the Rust counterpart of cmm's `simulate` mode, and what the balloon
//! kselftest drives.
//!
//! In `/sys/kernel/debug/rust_balloon_sim/`:
//!
//! - `target`: the wanted size in pages. Writing it resizes the balloon before the write
//!   returns. Anything but a decimal page count fails with `EINVAL`, a size no machine has
//!   with `ERANGE`; the balloon is left as it was.
//! - `pages`: the size now, in pages.
//! - `host`: how the simulated host answers migrations: `migrate` (the default), `deflate`
//!   (old page deflated, new one refused: the balloon shrinks), `busy` (try again) or `refuse`.
//!   Anything else fails with `EINVAL`.
//! - `stats`: `key value` lines: size, target, the pages inflated, deflated and migrated since
//!   the module was loaded, the migrations that deflated or were refused, and how many times
//!   inflating stopped short.
//!
//! Inflating stops short, leaving the target unmet, when a page cannot be allocated or when
//! `MemAvailable` falls to [`RESERVE_PAGES`]: a balloon that ate the last free pages would have
//! the OOM killer empty the guest. Unloading the module deflates the balloon completely.

use kernel::{
    balloon::{
        self,
        Balloon,
        BalloonPage,
        ManagedPages,
        MigrateMode,
        Migration,
        MigrationHandler,
        NewPage,
        OldPage, //
    },
    debugfs::Scope,
    fmt,
    new_mutex,
    page::PAGE_SIZE,
    prelude::*,
    sync::{
        atomic::{
            Atomic,
            Relaxed, //
        },
        Mutex, //
    },
    time::{
        delay::fsleep,
        Delta, //
    },
    uaccess::UserSliceReader, //
};

module! {
    type: BalloonSimModule,
    name: "rust_balloon_sim",
    authors: ["Rust balloon contributors"],
    description: "Memory balloon without a hypervisor, sized through debugfs",
    license: "GPL",
}

/// `MemAvailable`, in pages, that inflating leaves to the rest of the system (64 MiB).
const RESERVE_PAGES: usize = (64 << 20) / PAGE_SIZE;

/// How often inflating checks `MemAvailable`, in pages.
const CHECK_EVERY: usize = 256;

/// How the simulated host answers migrations, as named in the `host` file.
const ANSWERS: [(&str, Migration); 4] = [
    ("migrate", Migration::Migrated),
    ("deflate", Migration::Deflated),
    ("busy", Migration::Busy),
    ("refuse", Migration::Failed),
];

/// The simulated host: it answers every migration the same way and counts them.
struct Host {
    /// Index into [`ANSWERS`].
    answer: Atomic<usize>,
    migrated: Atomic<u64>,
    deflated: Atomic<u64>,
    refused: Atomic<u64>,
}

impl MigrationHandler for Host {
    fn migrate(&self, _new: &NewPage<'_>, _old: &OldPage<'_>, _mode: MigrateMode) -> Migration {
        let (_, answer) = ANSWERS[self.answer.load(Relaxed)];
        let counter = match answer {
            Migration::Migrated => &self.migrated,
            Migration::Deflated => &self.deflated,
            Migration::Busy | Migration::Failed => &self.refused,
        };
        counter.add(1, Relaxed);
        answer
    }
}

#[pin_data(PinnedDrop)]
struct BalloonSim {
    #[pin]
    balloon: Balloon<Host>,
    /// The wanted size; the lock also serialises resizes.
    #[pin]
    target: Mutex<usize>,
    inflated: Atomic<u64>,
    deflated: Atomic<u64>,
    stopped_short: Atomic<u64>,
}

impl BalloonSim {
    fn new() -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            balloon <- Balloon::new(ManagedPages::Adjust, Host {
                answer: Atomic::new(0),
                migrated: Atomic::new(0),
                deflated: Atomic::new(0),
                refused: Atomic::new(0),
            }),
            target <- new_mutex!(0),
            inflated: Atomic::new(0),
            deflated: Atomic::new(0),
            stopped_short: Atomic::new(0),
        }? Error)
    }

    /// Moves the balloon towards `target` pages; stops short when memory runs low.
    fn resize(&self, target: usize) {
        let mut wanted = self.target.lock();
        *wanted = target;
        while self.balloon.pages() < target {
            let n = self.balloon.pages();
            if n % CHECK_EVERY == 0 && balloon::available_pages() <= RESERVE_PAGES {
                self.stopped_short.add(1, Relaxed);
                return;
            }
            let Some(page) = BalloonPage::alloc() else {
                self.stopped_short.add(1, Relaxed);
                return;
            };
            self.balloon.enqueue(page);
            self.inflated.add(1, Relaxed);
        }
        while self.balloon.pages() > target {
            match self.balloon.dequeue() {
                // Dropping the page frees it: no host to tell first.
                Some(_page) => {
                    self.deflated.add(1, Relaxed);
                }
                // The rest are isolated for migration; they come back in a moment.
                None => fsleep(Delta::from_millis(1)),
            }
        }
    }
}

#[pinned_drop]
impl PinnedDrop for BalloonSim {
    fn drop(self: Pin<&mut Self>) {
        self.resize(0);
    }
}

/// What was written to a control file, trimmed; `EINVAL` if it is empty, does not fit `buf`,
/// or is not text.
fn read_text<'a>(reader: &mut UserSliceReader, buf: &'a mut [u8]) -> Result<&'a str> {
    let len = reader.len();
    if len == 0 || len >= buf.len() {
        return Err(EINVAL);
    }
    reader.read_slice(&mut buf[..len])?;
    let text = core::str::from_utf8(&buf[..len]).map_err(|_| EINVAL)?;
    Ok(text.trim())
}

fn write_target(sim: &BalloonSim, reader: &mut UserSliceReader) -> Result {
    let mut buf = [0u8; 24];
    let target: usize = read_text(reader, &mut buf)?.parse().map_err(|_| EINVAL)?;
    // More bytes than the address space holds: no machine has that much memory.
    target.checked_mul(PAGE_SIZE).ok_or(ERANGE)?;
    sim.resize(target);
    Ok(())
}

fn write_host(sim: &BalloonSim, reader: &mut UserSliceReader) -> Result {
    let mut buf = [0u8; 16];
    let text = read_text(reader, &mut buf)?;
    let i = ANSWERS
        .iter()
        .position(|(name, _)| *name == text)
        .ok_or(EINVAL)?;
    sim.balloon.handler().answer.store(i, Relaxed);
    Ok(())
}

fn show_host(sim: &BalloonSim, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(
        f,
        "{}",
        ANSWERS[sim.balloon.handler().answer.load(Relaxed)].0
    )
}

fn show_target(sim: &BalloonSim, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{}", *sim.target.lock())
}

fn show_pages(sim: &BalloonSim, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "{}", sim.balloon.pages())
}

fn show_stats(sim: &BalloonSim, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    writeln!(f, "pages {}", sim.balloon.pages())?;
    writeln!(f, "isolated {}", sim.balloon.isolated())?;
    writeln!(f, "target {}", *sim.target.lock())?;
    writeln!(f, "inflated {}", sim.inflated.load(Relaxed))?;
    writeln!(f, "deflated {}", sim.deflated.load(Relaxed))?;
    let host = sim.balloon.handler();
    writeln!(f, "migrated {}", host.migrated.load(Relaxed))?;
    writeln!(f, "deflated_by_migration {}", host.deflated.load(Relaxed))?;
    writeln!(f, "refused_migrations {}", host.refused.load(Relaxed))?;
    writeln!(f, "stopped_short {}", sim.stopped_short.load(Relaxed))
}

struct BalloonSimModule {
    // Dropping the scope removes the files, then deflates the balloon.
    _sim: Pin<KBox<Scope<BalloonSim>>>,
}

impl kernel::Module for BalloonSimModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let sim = KBox::pin_init(
            Scope::dir(BalloonSim::new(), c"rust_balloon_sim", |sim, d| {
                d.read_write_callback_file(c"target", sim, &show_target, &write_target);
                d.read_write_callback_file(c"host", sim, &show_host, &write_host);
                d.read_callback_file(c"pages", sim, &show_pages);
                d.read_callback_file(c"stats", sim, &show_stats);
            }),
            GFP_KERNEL,
        )?;
        Ok(Self { _sim: sim })
    }
}
