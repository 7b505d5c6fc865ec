// SPDX-License-Identifier: GPL-2.0

//! Free page reporting: telling a hypervisor which free pages it may take back.
//!
//! C header: [`include/linux/page_reporting.h`](srctree/include/linux/page_reporting.h)
//!
//! Some time after pages of at least the reporting order were freed, the page reporting core
//! takes batches of them off the free lists, marks them isolated, and hands each batch to the
//! registered device's report callback as a scatterlist. The device tells the hypervisor, which
//! may discard their contents; when the callback returns, the pages go back to the free lists,
//! marked reported. Only one device may be registered at a time.
//!
//! The callback runs from a workqueue, in process context, and may sleep. While it runs the
//! pages belong to nobody but the batch: no Rust code can reach them, only the device.
//!
//! What a reported page holds when it comes back is up to the hypervisor, unless it was told
//! what free pages hold. That matters with page poisoning, whose pattern the allocator checks,
//! and with init-on-free, after which a `__GFP_ZERO` allocation is not zeroed again: a page
//! table made of a page the hypervisor left dirty would point anywhere. So registering needs
//! [`ContentsKept`]: proof that free pages' contents do not matter, or that the hypervisor keeps
//! them.

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
    error::{
        from_result,
        to_result, //
    },
    ffi::{
        c_int,
        c_uint, //
    },
    prelude::*,
    sync::Arc,
    types::Opaque,
};
use core::ptr::NonNull;

/// The most pages one batch holds (`PAGE_REPORTING_CAPACITY`).
pub const CAPACITY: usize = bindings::PAGE_REPORTING_CAPACITY as usize;

/// What a reporting device does with a batch of free pages.
pub trait Reporter: Sync {
    /// Reports `pages` to the hypervisor; they return to the free lists afterwards. On error
    /// the core stops reporting until pages are freed again.
    fn report(&self, pages: &FreePages<'_>) -> Result;
}

impl<T: Reporter + ?Sized + Send> Reporter for Arc<T> {
    fn report(&self, pages: &FreePages<'_>) -> Result {
        T::report(self, pages)
    }
}

/// A batch of free pages, lent to a [`Reporter`] for one call.
///
/// # Invariants
///
/// `sg` is a valid scatterlist of `nents` entries over isolated free pages, owned by the page
/// reporting core for the lifetime `'a` of the report call, and `dev` is the device of the
/// registration that reports them.
pub struct FreePages<'a> {
    sg: NonNull<bindings::scatterlist>,
    nents: u32,
    dev: &'a Device,
}

impl FreePages<'_> {
    /// The number of entries (blocks of contiguous pages).
    pub fn len(&self) -> usize {
        self.nents as usize
    }

    /// Whether the batch is empty (it never is).
    pub fn is_empty(&self) -> bool {
        self.nents == 0
    }

    /// The scatterlist and its number of entries.
    pub(crate) fn raw(&self) -> (*mut bindings::scatterlist, u32) {
        (self.sg.as_ptr(), self.nents)
    }

    /// The device whose registration reports these pages: the one its [`ContentsKept`] is for.
    pub(crate) fn reporter_device(&self) -> &Device {
        self.dev
    }
}

/// Proof that reported pages come back holding what the allocator expects of a free page:
/// either it expects nothing ([`ContentsKept::not_needed`]), or the hypervisor behind the device
/// was told the value and keeps it (a device abstraction makes it, e.g.
/// [`virtio::balloon::tell_poison`](crate::virtio::balloon::tell_poison)).
///
/// # Invariants
///
/// Page poisoning and init-on-free are off, and `dev` is `None`; or the hypervisor reached
/// through the device `dev` keeps what free pages hold in the pages reported to it: zeroes with
/// init-on-free, on which `__GFP_ZERO` allocations rely; with page poisoning, the pattern, until
/// the device is reset (the allocator checks the pattern when it hands a page out, and reports a
/// mismatch, but relies on nothing).
///
/// A driver cannot make one up:
///
/// ```ignore
/// // compile_fail: E0451
/// let kept = kernel::mm::page_reporting::ContentsKept { dev: None };
/// ```
///
/// It asks the page allocator, or its device:
///
/// ```
/// use kernel::mm::{page_reporting::ContentsKept, poison};
///
/// let plain = !poison::init_on_free() && !poison::poisoning_enabled();
/// assert_eq!(ContentsKept::not_needed().is_some(), plain);
/// ```
#[derive(Clone, Copy)]
pub struct ContentsKept<'a> {
    dev: Option<&'a Device<Bound>>,
}

impl<'a> ContentsKept<'a> {
    /// The proof for any device if the allocator expects nothing of a free page: neither page
    /// poisoning nor init-on-free is on.
    pub fn not_needed() -> Option<Self> {
        let plain = !crate::mm::poison::init_on_free() && !crate::mm::poison::poisoning_enabled();
        // INVARIANT: Checked just before; the static keys do not change after boot.
        plain.then_some(Self { dev: None })
    }

    /// The proof for `dev`, for as long as it is bound.
    ///
    /// # Safety
    ///
    /// The hypervisor reached through `dev` keeps what free pages hold in pages reported to it,
    /// as the type invariant says: zeroes with init-on-free, for as long as `dev` is bound.
    pub(crate) unsafe fn told(dev: &'a Device<Bound>) -> Self {
        // INVARIANT: By the safety requirements.
        Self { dev: Some(dev) }
    }

    /// Whether this proof holds for `dev`.
    fn holds_for(&self, dev: &Device<Bound>) -> bool {
        match self.dev {
            None => true,
            Some(d) => core::ptr::eq(d, dev),
        }
    }
}

/// A registered page reporting device; dropping it unregisters it, waiting for a report in
/// progress.
///
/// # Invariants
///
/// `info` is registered with `page_reporting_register()`, with `Self::report_callback`, for
/// as long as `self` exists, or until `fence` is dropped or revoked at unbind. `dev` is the
/// device of the binding, bound while `info` is registered.
#[pin_data(PinnedDrop)]
pub struct Registration<R: Reporter> {
    #[pin]
    info: Opaque<bindings::page_reporting_dev_info>,
    reporter: R,
    dev: NonNull<bindings::device>,
    fence: Option<UnbindFence>,
}

// SAFETY: The registration only hands out `&R`, and `R: Sync`, and `&Device`, which is `Sync`;
// unregistering works from any thread.
unsafe impl<R: Reporter + Send> Send for Registration<R> {}

// SAFETY: As for `Send`; `info` is only touched by the page reporting core.
unsafe impl<R: Reporter> Sync for Registration<R> {}

impl<R: Reporter> Registration<R> {
    /// Registers `reporter`, the page reporting device of the bound device, for batches of at
    /// most `capacity` pages (at most [`CAPACITY`]), of free blocks of at least `order` (`None`:
    /// the core's choice, `pageblock_order`). The reporter may borrow for as long as `binding`
    /// lasts: should the registration be leaked, it is unregistered when the device is unbound.
    ///
    /// `kept` is the proof that pages come back holding what they held (see [`ContentsKept`]).
    ///
    /// Fails with `EINVAL` if `kept` is another device's, and with `EBUSY` if another device
    /// reports already.
    pub fn new<'a, D: AsRef<Device<Bound>>>(
        binding: Binding<'a, D>,
        reporter: R,
        capacity: usize,
        order: Option<u32>,
        kept: ContentsKept<'_>,
    ) -> impl PinInit<Self, Error> + 'a
    where
        R: 'a,
    {
        let dev = binding.device().as_ref();
        let theirs = !kept.holds_for(dev);
        try_pin_init!(&this in Self {
            reporter: {
                if theirs {
                    return Err(EINVAL);
                }
                reporter
            },
            // SAFETY: `as_raw` of a reference is not null.
            dev: unsafe { NonNull::new_unchecked(dev.as_raw()) },
            info <- Opaque::try_ffi_init(move |info: *mut bindings::page_reporting_dev_info| {
                // SAFETY: `info` is valid for writes and zeroed is its unregistered state.
                unsafe {
                    info.write(core::mem::zeroed());
                    (*info).report = Some(Self::report_callback);
                    (*info).order =
                        order.unwrap_or(bindings::PAGE_REPORTING_ORDER_UNSPECIFIED as c_uint);
                    (*info).capacity = capacity.min(CAPACITY) as c_uint;
                }
                // SAFETY: `info` is initialised and pinned in `self`, whose `reporter` is
                // initialised already; `drop` unregisters it.
                to_result(unsafe { bindings::page_reporting_register(info) })
            }),
            fence: {
                // SAFETY: `info` was registered just before.
                let undo = || unsafe { bindings::page_reporting_unregister(info.get()) };
                let (binding, data) = (Some(binding.generic()), this.as_ptr().cast());
                // SAFETY: Until the fence is dropped, in `drop`, `this` is a live registration,
                // and unregistering it once, on any thread that may sleep, ends every call to
                // `reporter`.
                unsafe { UnbindFence::arm_opt(binding, Self::unbind_action, data, undo) }?
            },
        }? Error)
    }

    /// The fence's action, which ends the registration: from its drop, or at unbind if it was
    /// leaked (or is being dropped meanwhile).
    ///
    /// # Safety
    ///
    /// `this` is a registered `Registration<R>`, whose memory stays valid (it is being dropped, or
    /// was leaked).
    unsafe fn unbind_action(this: *mut c_void) {
        let this = this.cast::<Self>();
        // SAFETY: By the safety requirements `info` is registered; unregistering cancels the
        // reporting work and waits for it.
        unsafe { bindings::page_reporting_unregister(Opaque::cast_into(&raw const (*this).info)) };
    }

    extern "C" fn report_callback(
        info: *mut bindings::page_reporting_dev_info,
        sg: *mut bindings::scatterlist,
        nents: c_uint,
    ) -> c_int {
        // SAFETY: The core only calls this with the `info` registered in `new`, embedded in a
        // live `Registration<R>` (unregistering waits for the call to end).
        let this = unsafe { crate::container_of!(Opaque::cast_from(info).cast_mut(), Self, info) };
        // Only `reporter` and `dev` are borrowed: the registration's drop may be taking its
        // `fence`.
        // SAFETY: `this` is live, and its `reporter` and `dev` are initialised before `info` is
        // registered.
        let (reporter, dev) = unsafe { (&(*this).reporter, (*this).dev) };
        let Some(sg) = NonNull::new(sg) else {
            return EINVAL.to_errno();
        };
        // SAFETY: `dev` is bound while `info` is registered (type invariant), so valid for the
        // call.
        let dev = unsafe { Device::from_raw(dev.as_ptr()) };
        // INVARIANT: The core passes a batch of `nents` isolated free pages, which it owns
        // until this call returns; `dev` is the registration's device.
        let pages = FreePages { sg, nents, dev };
        from_result(|| reporter.report(&pages).map(|()| 0))
    }
}

#[pinned_drop]
impl<R: Reporter> PinnedDrop for Registration<R> {
    fn drop(mut self: Pin<&mut Self>) {
        // SAFETY: `self` is `!Unpin`, so the `&mut` carries no uniqueness; only `fence` is
        // reached through it, which no callback touches.
        let fence = unsafe { UnbindFence::take(&raw mut self.as_mut().get_unchecked_mut().fence) };
        // The fence's action, or without one: unregistering cancels the reporting work and waits
        // for it, so no callback uses `reporter` afterwards.
        UnbindFence::end(fence, || {
            // SAFETY: Without a fence, `info` is registered for as long as `self` exists (type
            // invariant).
            unsafe { bindings::page_reporting_unregister(self.info.get()) };
        });
    }
}
