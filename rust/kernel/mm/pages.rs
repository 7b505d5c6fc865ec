// SPDX-License-Identifier: GPL-2.0

//! Blocks of `2^order` contiguous pages, and lists of them that need no memory of their own.
//!
//! C header: [`include/linux/gfp.h`](srctree/include/linux/gfp.h)
//!
//! [`crate::page::Page`] is one page the driver may map and fill. A [`Pages`] block is a higher
//! order allocation (`alloc_pages(gfp, order)`) that the driver only hands to a device by its
//! address, for instance to hint to a hypervisor that its memory is free: the driver never reads
//! or writes it, so it offers no access to its contents.
//!
//! A [`PagesList`] links blocks through their head page's `lru` node, as C drivers do, so keeping
//! thousands of blocks needs no allocation: what a driver gives back under memory pressure must
//! not need memory first.

use crate::{
    alloc::Flags,
    bindings,
    page::PAGE_SIZE,
    prelude::*,
    types::Opaque, //
};
use core::{
    marker::PhantomPinned,
    mem::ManuallyDrop,
    ptr::NonNull, //
};

/// `&page->lru`: the list node a page is linked through while the balloon core or a
/// list holds it.
///
/// # Safety
///
/// `page` must point to a valid `struct page`.
pub(crate) unsafe fn lru(page: NonNull<bindings::page>) -> *mut bindings::list_head {
    // SAFETY: `page` is valid, so is the address of its `lru` field.
    unsafe {
        &raw mut (*page.as_ptr())
            .__bindgen_anon_1
            .__bindgen_anon_1
            .__bindgen_anon_1
            .lru
    }
}

/// The page whose `lru` field is `node`.
///
/// # Safety
///
/// `node` must be the `lru` field of a valid `struct page`.
pub(crate) unsafe fn page_of_lru(node: *mut bindings::list_head) -> NonNull<bindings::page> {
    // SAFETY: `node` is the `lru` field of a page, so stepping back to the start of the page
    // stays inside it.
    let page = unsafe {
        crate::container_of!(
            node,
            bindings::page,
            __bindgen_anon_1.__bindgen_anon_1.__bindgen_anon_1.lru
        )
    };
    // SAFETY: The address of a field's container is not null.
    unsafe { NonNull::new_unchecked(page) }
}

/// The largest order the page allocator hands out (`MAX_PAGE_ORDER`).
pub const MAX_ORDER: u32 = bindings::MAX_PAGE_ORDER;

/// An owned block of `2^order` contiguous pages; dropping it frees it.
///
/// # Invariants
///
/// `page` is the head of a block of order `order` from `alloc_pages()`, owned by `self`; its
/// `lru` node belongs to whoever owns the block.
///
/// # Examples
///
/// ```
/// use kernel::alloc::flags::{__GFP_NOWARN, GFP_KERNEL};
/// use kernel::mm::pages::Pages;
/// use kernel::page::PAGE_SIZE;
///
/// let block = Pages::alloc(GFP_KERNEL | __GFP_NOWARN, 2).expect("16 KiB free");
/// assert_eq!(block.order(), 2);
/// assert_eq!(block.len(), 4 * PAGE_SIZE);
/// assert_eq!(block.pfn() % 4, 0);
/// ```
pub struct Pages {
    page: NonNull<bindings::page>,
    order: u32,
}

// SAFETY: A block of pages may be freed on any CPU; `Pages` offers no access to its contents.
unsafe impl Send for Pages {}

// SAFETY: `&Pages` only reads the block's address and order.
unsafe impl Sync for Pages {}

impl Pages {
    /// Allocates a block of `2^order` pages with `flags`; `None` if there is none, or `order` is
    /// above [`MAX_ORDER`].
    pub fn alloc(flags: Flags, order: u32) -> Option<Self> {
        if order > MAX_ORDER {
            return None;
        }
        // SAFETY: Any flags and an order up to `MAX_PAGE_ORDER` are valid for `alloc_pages`.
        let page = NonNull::new(unsafe { bindings::alloc_pages(flags.as_raw(), order) })?;
        // INVARIANT: `alloc_pages` returned the head of a fresh block of this order.
        Some(Self { page, order })
    }

    /// The block's order: it holds `2^order` pages.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// The block's size in bytes.
    pub fn len(&self) -> usize {
        PAGE_SIZE << self.order
    }

    /// Always `false`: a block holds at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The frame number of the block's first page.
    pub fn pfn(&self) -> usize {
        // SAFETY: `page` is a valid `struct page` (type invariant); `page_to_pfn` only computes.
        unsafe { bindings::page_to_pfn(self.page.as_ptr()) }
    }

    /// The block's head page, to describe it to a device.
    pub(crate) fn as_raw(&self) -> *mut bindings::page {
        self.page.as_ptr()
    }

    /// Gives up ownership: the caller frees the block with `__free_pages(page, order)`.
    fn into_raw(self) -> NonNull<bindings::page> {
        ManuallyDrop::new(self).page
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: `page` heads a block of order `order` that `self` owns (type invariant).
        unsafe { bindings::__free_pages(self.page.as_ptr(), self.order) };
    }
}

/// A list of [`Pages`] blocks of one order, linked through their head pages; dropping it frees
/// them.
///
/// # Invariants
///
/// `head` is an initialised list whose entries are the `lru` nodes of the head pages of `len`
/// blocks of order `order` that the list owns.
///
/// # Examples
///
/// ```
/// use kernel::alloc::flags::{__GFP_NOWARN, GFP_KERNEL};
/// use kernel::mm::pages::{Pages, PagesList};
/// use pin_init::stack_pin_init;
///
/// stack_pin_init!(let list = PagesList::new(1));
/// for _ in 0..3 {
///     let block = Pages::alloc(GFP_KERNEL | __GFP_NOWARN, 1).expect("8 KiB free");
///     assert!(list.as_mut().push(block).is_ok());
/// }
/// // A block of another order is given back.
/// let other = Pages::alloc(GFP_KERNEL | __GFP_NOWARN, 0).expect("4 KiB free");
/// assert!(list.as_mut().push(other).is_err());
/// assert_eq!(list.len(), 3);
/// let last = list.as_mut().pop().expect("three blocks");
/// assert_eq!(last.order(), 1);
/// assert_eq!(list.len(), 2);
/// ```
#[pin_data(PinnedDrop)]
pub struct PagesList {
    #[pin]
    head: Opaque<bindings::list_head>,
    order: u32,
    len: usize,
    // The nodes of the list point at `head`.
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: The list owns its blocks, which are `Send`.
unsafe impl Send for PagesList {}

// SAFETY: `&PagesList` only reads `len` and `order`.
unsafe impl Sync for PagesList {}

impl PagesList {
    /// An empty list of blocks of order `order`.
    pub fn new(order: u32) -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `INIT_LIST_HEAD` initialises the node in place.
            head <- Opaque::ffi_init(|head| unsafe { bindings::INIT_LIST_HEAD(head) }),
            order,
            len: 0,
            _pin: PhantomPinned,
        })
    }

    /// How many blocks the list holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `block` at the end; a block of another order is given back.
    pub fn push(self: Pin<&mut Self>, block: Pages) -> Result<(), Pages> {
        if block.order != self.order {
            return Err(block);
        }
        // SAFETY: Nothing moves out of `this`.
        let this = unsafe { self.get_unchecked_mut() };
        let page = block.into_raw();
        // SAFETY: `page` heads a block that is ours now, and its `lru` node is free for us to
        // link (`Pages` invariant); `head` is an initialised list (type invariant).
        unsafe { bindings::list_add_tail(lru(page), this.head.get()) };
        // INVARIANT: One more block of order `order` is linked.
        this.len += 1;
        Ok(())
    }

    /// Takes the block added last.
    pub fn pop(self: Pin<&mut Self>) -> Option<Pages> {
        // SAFETY: Nothing moves out of `this`.
        let this = unsafe { self.get_unchecked_mut() };
        if this.len == 0 {
            return None;
        }
        // SAFETY: The list is not empty, so `head.prev` is the `lru` node of the head page of a
        // block the list owns (type invariant).
        let page = unsafe {
            let node = (*this.head.get()).prev;
            bindings::list_del(node);
            page_of_lru(node)
        };
        // INVARIANT: The block left the list.
        this.len -= 1;
        // INVARIANT: `page` heads a block of order `order` that was the list's and is ours now.
        Some(Pages {
            page,
            order: this.order,
        })
    }
}

#[pinned_drop]
impl PinnedDrop for PagesList {
    fn drop(mut self: Pin<&mut Self>) {
        while self.as_mut().pop().is_some() {}
    }
}
