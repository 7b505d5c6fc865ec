// SPDX-License-Identifier: GPL-2.0

//! Memory balloons.
//!
//! A memory balloon takes pages away from the kernel to hand the memory behind them to someone
//! else, usually a hypervisor ("inflating"), and gives them back later ("deflating"). The balloon
//! core keeps each balloon's pages on a list, counts them (`balloon_inflate`, `balloon_deflate`,
//! `balloon_migrate` and `nr_balloon_pages` in `/proc/vmstat`; optionally the zones' managed
//! pages, hence `MemTotal`), and gives them movable_ops, so that compaction can migrate them
//! (Documentation/mm/page_migration.rst, "movable_ops page migration"). This module is how a
//! Rust driver uses it.
//!
//! C header: [`include/linux/balloon.h`](srctree/include/linux/balloon.h)
//!
//! # Ownership
//!
//! A [`BalloonPage`] is a page the driver owns: [`BalloonPage::alloc`] gives one, dropping it
//! frees it. [`Balloon::enqueue`] takes it and puts it in the balloon; from then on the driver
//! has nothing that reaches the page, so it can neither use nor free it while the core or
//! compaction may be moving it. [`Balloon::dequeue`] gives a page back as a [`BalloonPage`].
//! [`PageList`] carries many pages at once, for the list versions of both.
//!
//! # Locking
//!
//! All balloons share one spinlock in `mm/balloon.c`, taken with interrupts off by every
//! operation here; none of them sleeps, and all take `&self`, so a [`Balloon`] can be used from
//! several threads at once. Migration callbacks ([`MigrationHandler::migrate`]) run without that
//! lock, in process context, with the two pages locked; see the trait for what they may do.
//!
//! While pages are isolated for migration they are neither on the balloon list nor gone: a
//! dequeue may find the list empty although [`Balloon::pages`] is not zero. That is a normal
//! result here ([`None`], or fewer pages than asked for), never the `BUG()` that
//! `balloon_page_dequeue()` raises when it believes pages were lost; this module never calls it.

use crate::{
    bindings,
    device::{
        Bound,
        Device, //
    },
    devres::{
        Binding,
        UnbindFence, //
    },
    prelude::*,
    sync::atomic::{
        Atomic,
        Relaxed, //
    },
    time::{
        delay::fsleep,
        Delta, //
    },
    types::Opaque, //
};
use core::ptr::NonNull;
use pin_init::stack_pin_init;

mod migrate;
mod page;

pub use migrate::{
    MigrateMode,
    Migration,
    MigrationHandler,
    MigrationPage,
    New,
    NewPage,
    Old,
    OldPage, //
};
pub use page::{
    BalloonPage,
    PageList,
    Pfn,
    FRAMES_4K_PER_PAGE, //
};

/// Memory the kernel could hand to a balloon without swapping or killing anything, in pages:
/// `MemAvailable` (`si_mem_available()`). A balloon that stops growing well before this reaches
/// zero leaves the rest of the system room to live.
///
/// # Examples
///
/// ```
/// use kernel::balloon::{available_pages, BalloonPage};
///
/// const RESERVE: usize = 16384;
/// let page = if available_pages() > RESERVE { BalloonPage::alloc() } else { None };
/// # drop(page);
/// ```
pub fn available_pages() -> usize {
    // SAFETY: `si_mem_available` has no preconditions.
    let pages = unsafe { bindings::si_mem_available() };
    usize::try_from(pages).unwrap_or(0)
}

/// Whether ballooned pages still count as the kernel's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagedPages {
    /// Pages in the balloon leave their zone's managed page count, so `MemTotal` shrinks as
    /// the balloon grows: the memory is gone until the host gives it back.
    Adjust,
    /// Pages in the balloon stay in the managed page count: the memory is only lent and the
    /// driver takes it back under memory pressure (virtio's deflate-on-oom).
    Keep,
}

/// A memory balloon: `struct balloon_dev_info` and the driver's [`MigrationHandler`].
///
/// # Examples
///
/// ```
/// use kernel::balloon::{Balloon, BalloonPage, ManagedPages};
///
/// let balloon = KBox::pin_init(Balloon::new(ManagedPages::Adjust, ()), GFP_KERNEL)?;
/// if let Some(page) = BalloonPage::alloc() {
///     let pfn = page.pfn();
///     balloon.enqueue(page);
///     assert_eq!(balloon.pages(), 1);
///     // Nothing moves the page: `()` refuses every migration.
///     let page = balloon.dequeue().ok_or(EINVAL)?;
///     assert_eq!(page.pfn(), pfn);
/// }
/// assert_eq!(balloon.pages(), 0);
/// # Ok::<(), Error>(())
/// ```
///
/// The list versions move many pages at once:
///
/// ```
/// use kernel::balloon::{Balloon, BalloonPage, ManagedPages, PageList};
/// use pin_init::stack_pin_init;
///
/// let balloon = KBox::pin_init(Balloon::new(ManagedPages::Keep, ()), GFP_KERNEL)?;
/// stack_pin_init!(let list = PageList::new());
/// while list.len() < 16 {
///     let Some(page) = BalloonPage::alloc() else { break };
///     list.as_mut().push(page);
/// }
/// let n = balloon.enqueue_list(list.as_mut());
/// assert!(list.is_empty() && balloon.pages() == n);
/// // Asking for more than the balloon holds gives what it has.
/// assert_eq!(balloon.dequeue_list(list.as_mut(), n + 10), n);
/// assert_eq!((balloon.pages(), balloon.isolated()), (0, 0));
/// # Ok::<(), Error>(())
/// ```
///
/// # Teardown
///
/// A driver deflates its balloon, telling its host, before it drops it. If pages are left,
/// dropping the balloon waits for migrations in flight, takes every page back, frees them and
/// says so in the kernel log: the pages are not lost, but the host was not told.
///
/// # Leaks
///
/// Compaction calls the handler for as long as pages are in the balloon, so a balloon that is
/// leaked (`mem::forget`) with pages in it goes on calling it. [`Balloon::new`] therefore takes
/// only handlers that own what they use (`'static`); a handler that borrows driver data takes
/// [`Balloon::new_for`] and the driver's [`Binding`]: if the balloon is leaked, its pages are
/// taken back and freed when the device is unbound, before the borrow ends, and it takes no page
/// any more (a page enqueued afterwards, by another leaked part of the driver, is freed).
///
/// ```
/// use kernel::balloon::{Balloon, ManagedPages, MigrateMode, Migration, MigrationHandler};
/// use kernel::balloon::{NewPage, OldPage};
///
/// struct Counted(u32);
///
/// impl MigrationHandler for Counted {
///     fn migrate(&self, _: &NewPage<'_>, _: &OldPage<'_>, _: MigrateMode) -> Migration {
///         Migration::Failed
///     }
/// }
///
/// let balloon = KBox::pin_init(Balloon::new(ManagedPages::Keep, Counted(0)), GFP_KERNEL)?;
/// # drop(balloon);
/// # Ok::<(), Error>(())
/// ```
///
/// A handler borrowing a local cannot be given to [`Balloon::new`] (the local does not live long
/// enough; `tests/test_compile_fail.py` checks that this does not compile):
///
/// ```ignore
/// // compile_fail: E0597
/// use kernel::balloon::{Balloon, ManagedPages, MigrateMode, Migration, MigrationHandler};
/// use kernel::balloon::{NewPage, OldPage};
///
/// struct Counted<'a>(&'a u32);
///
/// impl MigrationHandler for Counted<'_> {
///     fn migrate(&self, _: &NewPage<'_>, _: &OldPage<'_>, _: MigrateMode) -> Migration {
///         Migration::Failed
///     }
/// }
///
/// let local = 0;
/// let balloon = KBox::pin_init(Balloon::new(ManagedPages::Keep, Counted(&local)), GFP_KERNEL)?;
/// core::mem::forget(balloon);
/// # Ok::<(), Error>(())
/// ```
///
/// # Invariants
///
/// - `core.info` is an initialised `struct balloon_dev_info` whose `migratepage` is
///   `Self::migrate_callback`, and it is pinned: the core links pages to it through
///   `page->private`.
/// - `core.pages` counts the pages in this balloon, on its list or isolated from it for
///   migration, below its `CLOSED` bit. It is raised before pages join the balloon and lowered
///   after they left it, so it never falls below the true count; the one exception is a page
///   dropped by a `-ENOENT` migration, counted out just before the core drops it, while it is
///   still isolated. Once the balloon is emptied for good, `CLOSED` is set and no page joins
///   it any more.
/// - `fence`, if any, empties the balloon when it is dropped, or at unbind if that comes first.
#[pin_data(PinnedDrop)]
pub struct Balloon<H: MigrationHandler> {
    #[pin]
    core: Inner,
    #[pin]
    handler: H,
    fence: Option<UnbindFence>,
}

/// What a balloon is without its handler, and what every operation but migration works on: not
/// generic, so that a driver's module does not carry a copy of it.
///
/// # Invariants
///
/// As [`Balloon`]'s, for `info` and `pages`.
#[pin_data]
struct Inner {
    #[pin]
    info: Opaque<bindings::balloon_dev_info>,
    pages: Atomic<usize>,
}

/// The bit of `Inner::pages` that says the balloon was emptied for good: by its drop or its fence.
const CLOSED: usize = 1 << (usize::BITS - 1);

// SAFETY: The balloon core serialises all access to `info` with its own lock, `pages` is atomic,
// and `H` is `Send`.
unsafe impl<H: MigrationHandler> Send for Balloon<H> {}

// SAFETY: Every method takes `&self` and is safe to call concurrently (see the module's locking
// rules); `H` is `Sync`.
unsafe impl<H: MigrationHandler> Sync for Balloon<H> {}

impl<H: MigrationHandler + 'static> Balloon<H> {
    /// Creates an empty balloon whose pages migrate through `handler`, which owns what it uses:
    /// a value, or an initialiser for handlers that hold locks.
    pub fn new<E>(
        managed: ManagedPages,
        handler: impl PinInit<H, E> + 'static,
    ) -> impl PinInit<Self, Error>
    where
        Error: From<E>,
    {
        Self::init(managed, handler, None)
    }
}

impl<H: MigrationHandler> Balloon<H> {
    /// Creates an empty balloon whose pages migrate through `handler`, which may borrow for as
    /// long as `binding` lasts (see [Leaks](Balloon#leaks)).
    pub fn new_for<'a, D: AsRef<Device<Bound>>, E>(
        binding: Binding<'a, D>,
        managed: ManagedPages,
        handler: impl PinInit<H, E> + 'a,
    ) -> impl PinInit<Self, Error> + 'a
    where
        Error: From<E>,
        H: 'a,
    {
        Self::init(managed, handler, Some(binding.generic()))
    }

    fn init<'a, E>(
        managed: ManagedPages,
        handler: impl PinInit<H, E> + 'a,
        binding: Option<Binding<'a>>,
    ) -> impl PinInit<Self, Error> + 'a
    where
        Error: From<E>,
        H: 'a,
    {
        try_pin_init!(&this in Self {
            // SAFETY: The `core` of `this`, a `Balloon<H>`, with its `migrate_callback`.
            core <- unsafe { Inner::new(managed, Self::migrate_callback) },
            handler <- handler,
            fence: {
                // SAFETY: `this` points at the balloon being initialised; taking the address of
                // one of its fields reads nothing.
                let data = unsafe { &raw mut (*this.as_ptr()).core }.cast();
                // SAFETY: Until the fence is dropped, in `drop`, `this` is a live balloon; its
                // action empties it, on any thread that may sleep, after which no page leads
                // compaction to `handler`. The balloon is empty now: nothing to undo.
                unsafe { UnbindFence::arm_opt(binding, Inner::unbind_action, data, || ()) }?
            },
        }? Error)
    }

    /// The driver's migration handler, which also carries whatever state the driver keeps
    /// with the balloon.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Number of pages in the balloon, isolated ones included.
    #[inline]
    pub fn pages(&self) -> usize {
        self.core.pages()
    }

    /// Number of pages isolated for migration at the moment of the call; the figure may change
    /// right after. A snapshot for statistics: [`Self::pages`] includes them.
    #[inline]
    pub fn isolated(&self) -> usize {
        self.core.isolated()
    }

    /// Puts a page in the balloon. The page is counted as ballooned (`balloon_inflate`,
    /// `nr_balloon_pages`, and the managed page count if [`ManagedPages::Adjust`]) and may be
    /// migrated from now on. A balloon emptied at unbind (leaked, see [Leaks](Balloon#leaks))
    /// takes no page: this one is freed.
    #[inline]
    pub fn enqueue(&self, page: BalloonPage) {
        self.core.enqueue(page)
    }

    /// Puts every page of `list` in the balloon, leaving it empty; returns how many. A balloon
    /// emptied at unbind takes none, and leaves them on `list`.
    #[inline]
    pub fn enqueue_list(&self, list: Pin<&mut PageList>) -> usize {
        self.core.enqueue_list(list)
    }

    /// Takes one page out of the balloon, or [`None`] if the balloon list is empty, which it
    /// may be while pages are isolated for migration. The page is no longer ballooned; tell the
    /// host before dropping it, if the protocol asks for that.
    #[inline]
    pub fn dequeue(&self) -> Option<BalloonPage> {
        self.core.dequeue()
    }

    /// Moves up to `n` pages from the balloon to the head of `list`; returns how many. Fewer than
    /// `n` come out when the balloon has fewer on its list.
    #[inline]
    pub fn dequeue_list(&self, list: Pin<&mut PageList>, n: usize) -> usize {
        self.core.dequeue_list(list, n)
    }

    /// `migratepage` of `struct balloon_dev_info`.
    ///
    /// # Safety
    ///
    /// Called by the balloon core only, with `info` a balloon's `info` field, `page` isolated
    /// from it and both pages locked, valid for the duration of the call.
    unsafe extern "C" fn migrate_callback(
        info: *mut bindings::balloon_dev_info,
        newpage: *mut bindings::page,
        page: *mut bindings::page,
        mode: bindings::migrate_mode,
    ) -> c_int {
        // SAFETY: Only `Balloon::<H>::init` installs this callback (through `Inner::new`), so
        // `info` is the `core.info` field of a `Balloon<H>`; it is alive, since it has an isolated
        // page that its drop waits for.
        let this = unsafe { &*crate::container_of!(Opaque::cast_from(info), Self, core.info) };
        let (Some(new), Some(old)) = (NonNull::new(newpage), NonNull::new(page)) else {
            return EINVAL.to_errno();
        };
        // SAFETY: The migration core keeps both pages valid and locked during the call, which
        // the lifetimes of `new` and `old` cannot outlive.
        let (new, old) = unsafe { (NewPage::from_raw(new), OldPage::from_raw(old)) };
        let outcome = this
            .handler
            .migrate(&new, &old, MigrateMode::from_raw(mode));
        if outcome == Migration::Deflated {
            // INVARIANT: The core drops the old page from the balloon when it sees `-ENOENT`.
            this.core.pages.fetch_sub(1, Relaxed);
        }
        outcome.to_errno()
    }
}

impl Inner {
    /// An empty balloon whose pages migrate through `migratepage`.
    ///
    /// # Safety
    ///
    /// The initialiser is only used for the `core` field of a `Balloon<H>`, and `migratepage`
    /// is that type's `migrate_callback`, which finds the balloon from `info`.
    unsafe fn new(
        managed: ManagedPages,
        migratepage: unsafe extern "C" fn(
            *mut bindings::balloon_dev_info,
            *mut bindings::page,
            *mut bindings::page,
            bindings::migrate_mode,
        ) -> c_int,
    ) -> impl PinInit<Self> {
        pin_init!(Self {
            info <- Opaque::ffi_init(move |info: *mut bindings::balloon_dev_info| {
                // SAFETY: `info` is valid for writes and pinned, as the list head inside needs.
                unsafe { bindings::balloon_devinfo_init(info) };
                // SAFETY: `info` was just initialised and nothing else knows it yet.
                unsafe {
                    (*info).adjust_managed_page_count = managed == ManagedPages::Adjust;
                    (*info).migratepage = Some(migratepage);
                }
            }),
            pages: Atomic::new(0),
        })
    }

    /// The fence's action, which empties the balloon: from its drop, or at unbind if it was
    /// leaked (or is being dropped meanwhile).
    ///
    /// # Safety
    ///
    /// `this` is the core of a balloon whose memory stays valid (it is being dropped, or was
    /// leaked).
    unsafe fn unbind_action(this: *mut c_void) {
        // SAFETY: By the safety requirements.
        unsafe { &*this.cast::<Self>() }.empty();
    }

    fn pages(&self) -> usize {
        self.pages.load(Relaxed) & !CLOSED
    }

    /// Counts `n` pages in, before they join the balloon; `false`, counting nothing, if it is
    /// closed. The count and the bit share one atomic: `empty()` either sees these pages
    /// counted, and waits until they have joined and it took them out, or they see it closed.
    fn admit(&self, n: usize) -> bool {
        // INVARIANT: Raised before the pages join the balloon, or not at all.
        if self.pages.fetch_add(n, Relaxed) & CLOSED != 0 {
            self.pages.fetch_sub(n, Relaxed);
            return false;
        }
        true
    }

    fn isolated(&self) -> usize {
        // The core changes `isolated_pages` with a plain `++`/`--` under `mm/balloon.c`'s own
        // lock, out of reach here: C reads it as a marked, tolerated race
        // (`data_race(READ_ONCE())`), which the helper does. An aligned word is torn neither by
        // the stores nor by the load, so the value read is one that was written.
        // SAFETY: `info` is valid (type invariant).
        unsafe { bindings::balloon_isolated_pages(self.info.get()) }
    }

    fn enqueue(&self, page: BalloonPage) {
        if !self.admit(1) {
            return;
        }
        let page = page.into_raw();
        // SAFETY: `info` is valid (type invariant); we owned `page`, its `lru` is unused, and
        // the balloon now holds it.
        unsafe { bindings::balloon_page_enqueue(self.info.get(), page.as_ptr()) };
    }

    fn enqueue_list(&self, list: Pin<&mut PageList>) -> usize {
        let n = list.len();
        if !self.admit(n) {
            return 0;
        }
        // SAFETY: `info` is valid (type invariant); `list` is initialised and owns its `n`
        // pages, which the core moves to the balloon, all of them.
        unsafe { bindings::balloon_page_list_enqueue(self.info.get(), list.head()) };
        // SAFETY: The core took all `n` pages off the list.
        unsafe { list.adjust_len(0, n) };
        n
    }

    fn dequeue(&self) -> Option<BalloonPage> {
        stack_pin_init!(let list = PageList::new());
        self.dequeue_list(list.as_mut(), 1);
        list.as_mut().pop()
    }

    fn dequeue_list(&self, list: Pin<&mut PageList>, n: usize) -> usize {
        // SAFETY: `info` is valid (type invariant) and `list` is initialised. The list version
        // returns what it finds and never `BUG()`s.
        let done = unsafe { bindings::balloon_page_list_dequeue(self.info.get(), list.head(), n) };
        // INVARIANT: Lowered after the pages left the balloon.
        self.pages.fetch_sub(done, Relaxed);
        // SAFETY: The core added `done` pages, taken out of the balloon, to the list.
        unsafe { list.adjust_len(done, 0) };
        done
    }

    /// Takes every page out of the balloon and frees it, waiting for the migrations in flight
    /// and the pages being enqueued, and closes it; afterwards no page leads the core to it.
    fn empty(&self) {
        // INVARIANT: Closed for good; the pages being enqueued are counted, and waited for below.
        let mut pages = self.pages.load(Relaxed);
        while let Err(now) = self.pages.cmpxchg(pages, pages | CLOSED, Relaxed) {
            pages = now;
        }
        let mut left = 0;
        loop {
            stack_pin_init!(let list = PageList::new());
            left += self.dequeue_list(list.as_mut(), usize::MAX);
            // Pages isolated for migration come back to the list, or are replaced on it, as
            // soon as their migration ends. Once none is counted and none is isolated, no page
            // leads to `info` any more, and the last access of a migration to it was the
            // decrement of `isolated_pages`, under the core's lock: one more lock round trip
            // (a dequeue of nothing) waits for that critical section to end.
            if self.pages() == 0 && self.isolated() == 0 {
                self.dequeue_list(list.as_mut(), 0);
                break;
            }
            fsleep(Delta::from_millis(1));
        }
        if left > 0 {
            pr_warn!("balloon: dropped with {left} pages, freed without telling the host\n");
        }
    }
}

#[pinned_drop]
impl<H: MigrationHandler> PinnedDrop for Balloon<H> {
    fn drop(mut self: Pin<&mut Self>) {
        // SAFETY: `self` is `!Unpin`, so the `&mut` carries no uniqueness; only `fence` is
        // reached through it, which no callback touches.
        let fence = unsafe { UnbindFence::take(&raw mut self.as_mut().get_unchecked_mut().fence) };
        // The fence's action empties the balloon, as this does without one.
        UnbindFence::end(fence, || self.core.empty());
    }
}

#[cfg(CONFIG_RUST_BALLOON_KUNIT_TEST)]
mod tests;
