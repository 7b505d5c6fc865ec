// SPDX-License-Identifier: GPL-2.0

//! Pages of a memory balloon while the driver owns them.
//!
//! A balloon page is owned by the driver from its allocation until it is enqueued, and again
//! from the moment it is dequeued until it is freed. In between it belongs to the balloon core:
//! the driver keeps nothing that could reach it, so it cannot touch or free a page that the
//! core, or compaction, may be moving.

use crate::{
    bindings,
    mm::pages::{
        lru,
        page_of_lru, //
    },
    page::{
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    prelude::*,
    types::Opaque, //
};
use core::{
    mem::ManuallyDrop,
    ops::Range,
    ptr::NonNull, //
};

/// The shift of the 4 KiB frames that hypervisor balloon protocols count in.
const SHIFT_4K: usize = 12;

/// Number of 4 KiB frames in one page: 1 with 4 KiB pages, 16 with 64 KiB pages.
pub const FRAMES_4K_PER_PAGE: usize = PAGE_SIZE >> SHIFT_4K;

/// A page frame number, in units of [`PAGE_SIZE`].
///
/// # Examples
///
/// ```
/// use kernel::balloon::{Pfn, FRAMES_4K_PER_PAGE};
///
/// let pfn = Pfn::new(0x1234);
/// assert_eq!(pfn.get(), 0x1234);
/// assert_eq!(pfn.frames_4k().count(), FRAMES_4K_PER_PAGE);
/// assert_eq!(pfn.frames_4k().start, 0x1234 * FRAMES_4K_PER_PAGE as u64);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pfn(usize);

impl Pfn {
    /// Wraps a page frame number.
    pub const fn new(pfn: usize) -> Self {
        Self(pfn)
    }

    /// The page frame number, in [`PAGE_SIZE`] units.
    #[inline]
    pub const fn get(self) -> usize {
        self.0
    }

    /// The 4 KiB frames this page covers: [`FRAMES_4K_PER_PAGE`] consecutive frame numbers.
    #[inline]
    pub const fn frames_4k(self) -> Range<u64> {
        frames_4k_with_shift(self.0, PAGE_SHIFT)
    }
}

/// The 4 KiB frames of page frame `pfn` for a page size of `1 << page_shift`; separate from
/// [`Pfn::frames_4k`] so that the arithmetic of other page sizes can be tested on any kernel.
#[inline]
pub(crate) const fn frames_4k_with_shift(pfn: usize, page_shift: usize) -> Range<u64> {
    let per_page = 1u64 << (page_shift - SHIFT_4K);
    let first = (pfn as u64) * per_page;
    first..first + per_page
}

/// A page allocated for a balloon that the driver owns: not yet enqueued, or dequeued again.
///
/// The driver can read its frame number, to tell a hypervisor about it, but cannot map it: its
/// contents are of no use to anyone, and while it sits in a balloon the host may have taken the
/// memory behind it. Dropping it frees it.
///
/// # Examples
///
/// ```
/// use kernel::balloon::BalloonPage;
///
/// // Allocation fails quietly when memory is short: a balloon then stops growing.
/// if let Some(page) = BalloonPage::alloc() {
///     let frames = page.pfn().frames_4k();
///     assert!(frames.start <= frames.end);
///     // Dropped here: the page goes back to the page allocator.
/// }
/// ```
///
/// # Invariants
///
/// `page` points to a valid order-0 `struct page` that this object owns exclusively: it holds
/// the only reference, the page is on no list (its `lru` field is free for the balloon core),
/// and it is in no balloon.
pub struct BalloonPage {
    page: NonNull<bindings::page>,
}

// SAFETY: A `BalloonPage` is the exclusive owner of a page; freeing a page from another thread
// than the one that allocated it is fine.
unsafe impl Send for BalloonPage {}

// SAFETY: `&BalloonPage` only allows reading the page frame number, which never changes.
unsafe impl Sync for BalloonPage {}

impl BalloonPage {
    /// Allocates a page for a balloon, as `balloon_page_alloc()` does: movable (when balloon
    /// migration is built in), without retrying, warning, or dipping into the emergency
    /// reserves. Returns [`None`] when memory is short; a balloon stops growing then.
    #[inline]
    pub fn alloc() -> Option<Self> {
        // SAFETY: `balloon_page_alloc` has no preconditions.
        let page = NonNull::new(unsafe { bindings::balloon_page_alloc() })?;
        // INVARIANT: A freshly allocated order-0 page, whose only reference we hold.
        Some(Self { page })
    }

    /// Takes ownership of a page.
    ///
    /// # Safety
    ///
    /// `page` must point to a valid order-0 page that the caller owns exclusively, that is on
    /// no list and in no balloon; ownership passes to the returned object.
    pub(crate) unsafe fn from_raw(page: NonNull<bindings::page>) -> Self {
        // INVARIANT: Guaranteed by the caller.
        Self { page }
    }

    /// Gives up ownership of the page without freeing it.
    pub(crate) fn into_raw(self) -> NonNull<bindings::page> {
        ManuallyDrop::new(self).page
    }

    /// The page's frame number.
    #[inline]
    pub fn pfn(&self) -> Pfn {
        pfn_of(self.page)
    }
}

impl Drop for BalloonPage {
    fn drop(&mut self) {
        // SAFETY: By the type invariants we own the page, and it is on no list and in no
        // balloon, so nobody else can reach it once it is freed.
        unsafe { bindings::__free_pages(self.page.as_ptr(), 0) };
    }
}

/// The frame number of a valid page.
#[inline]
pub(crate) fn pfn_of(page: NonNull<bindings::page>) -> Pfn {
    // SAFETY: `page` points to a valid `struct page`; `page_to_pfn` only computes.
    Pfn(unsafe { bindings::page_to_pfn(page.as_ptr()) })
}

/// A list of [`BalloonPage`]s, linked through the pages themselves, so building one never
/// allocates. The list version of enqueue takes all its pages, and dequeue fills one.
///
/// Dropping the list frees its pages.
///
/// # Examples
///
/// ```
/// use kernel::balloon::{BalloonPage, PageList};
/// use pin_init::stack_pin_init;
///
/// stack_pin_init!(let list = PageList::new());
/// for _ in 0..4 {
///     let Some(page) = BalloonPage::alloc() else { break };
///     list.as_mut().push(page);
/// }
/// let n = list.len();
/// assert_eq!(list.pfns().count(), n);
/// assert!(list.as_mut().pop().is_some() || n == 0);
/// // The rest are freed with the list.
/// ```
///
/// # Invariants
///
/// `head` is an initialised list head, and the list holds exactly `len` pages, linked through
/// their `lru` fields, each owned by the list as a [`BalloonPage`] would own it.
#[pin_data(PinnedDrop)]
pub struct PageList {
    #[pin]
    head: Opaque<bindings::list_head>,
    len: usize,
}

impl PageList {
    /// Creates an empty list.
    pub fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `slot` is valid for writes, and pinned: the list head may point at itself.
            head <- Opaque::ffi_init(|slot| unsafe { bindings::INIT_LIST_HEAD(slot) }),
            len: 0,
        })
    }

    /// Number of pages on the list.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list holds no page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a page at the end of the list.
    pub fn push(self: Pin<&mut Self>, page: BalloonPage) {
        // SAFETY: We do not move out of `self`.
        let this = unsafe { self.get_unchecked_mut() };
        let page = page.into_raw();
        // SAFETY: `page` is valid and its `lru` unused (it was a `BalloonPage`); the head is
        // initialised and pinned.
        unsafe { bindings::list_add_tail(lru(page), this.head.get()) };
        // INVARIANT: One more page on the list, which now owns it.
        this.len += 1;
    }

    /// Takes the last page off the list.
    pub fn pop(self: Pin<&mut Self>) -> Option<BalloonPage> {
        // SAFETY: We do not move out of `self`.
        let this = unsafe { self.get_unchecked_mut() };
        if this.len == 0 {
            return None;
        }
        // SAFETY: The list is initialised and not empty, so its last entry is a page's `lru`.
        let page = unsafe { page_of_lru((*this.head.get()).prev) };
        // SAFETY: `page` is on this list.
        unsafe { bindings::list_del(lru(page)) };
        // INVARIANT: One page less on the list; its ownership goes to the caller.
        this.len -= 1;
        // SAFETY: The page was owned by the list and is on no list any more.
        Some(unsafe { BalloonPage::from_raw(page) })
    }

    /// The frame numbers of the pages on the list, first to last.
    pub fn pfns(&self) -> impl Iterator<Item = Pfn> + '_ {
        let head = self.head.get();
        // SAFETY: The list head is initialised.
        let mut node = unsafe { (*head).next };
        core::iter::from_fn(move || {
            if node == head {
                return None;
            }
            // SAFETY: `node` is the `lru` field of a page on this list, and `&self` keeps the
            // list unchanged while the iterator lives.
            let page = unsafe { page_of_lru(node) };
            // SAFETY: As above.
            node = unsafe { (*node).next };
            Some(pfn_of(page))
        })
    }

    /// The list head, for the balloon core's list functions.
    pub(crate) fn head(&self) -> *mut bindings::list_head {
        self.head.get()
    }

    /// Records that the balloon core moved pages onto (`added`) or off (`removed`) the list.
    ///
    /// # Safety
    ///
    /// The list must hold exactly `len + added - removed` pages afterwards, each owned by it.
    pub(crate) unsafe fn adjust_len(self: Pin<&mut Self>, added: usize, removed: usize) {
        // SAFETY: We do not move out of `self`.
        let this = unsafe { self.get_unchecked_mut() };
        // INVARIANT: Guaranteed by the caller.
        this.len = this.len + added - removed;
    }
}

#[pinned_drop]
impl PinnedDrop for PageList {
    fn drop(mut self: Pin<&mut Self>) {
        while self.as_mut().pop().is_some() {}
    }
}
