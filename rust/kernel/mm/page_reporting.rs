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
use core::{
    marker::PhantomData,
    ptr::NonNull, //
};

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
/// reporting core for the lifetime `'a` of the report call.
pub struct FreePages<'a> {
    sg: NonNull<bindings::scatterlist>,
    nents: u32,
    _call: PhantomData<&'a ()>,
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
}

/// A registered page reporting device; dropping it unregisters it, waiting for a report in
/// progress.
///
/// # Invariants
///
/// `info` is registered with `page_reporting_register()`, with [`Self::report_callback`], for
/// as long as `self` exists, or until `fence` is dropped or revoked at unbind.
#[pin_data(PinnedDrop)]
pub struct Registration<R: Reporter> {
    #[pin]
    info: Opaque<bindings::page_reporting_dev_info>,
    reporter: R,
    fence: Option<UnbindFence>,
}

// SAFETY: The registration only hands out `&R`, and `R: Sync`; unregistering works from any
// thread.
unsafe impl<R: Reporter + Send> Send for Registration<R> {}

// SAFETY: As for `Send`; `info` is only touched by the page reporting core.
unsafe impl<R: Reporter> Sync for Registration<R> {}

impl<R: Reporter> Registration<R> {
    /// Registers `reporter`, the page reporting device of the bound device, for batches of at
    /// most `capacity` pages (at most [`CAPACITY`]), of free blocks of at least `order` (`None`:
    /// the core's choice, `pageblock_order`). The reporter may borrow for as long as `binding`
    /// lasts: should the registration be leaked, it is unregistered when the device is unbound.
    ///
    /// Fails with `EBUSY` if another device reports already.
    pub fn new<'a, D: AsRef<Device<Bound>>>(
        binding: Binding<'a, D>,
        reporter: R,
        capacity: usize,
        order: Option<u32>,
    ) -> impl PinInit<Self, Error> + 'a
    where
        R: 'a,
    {
        try_pin_init!(&this in Self {
            reporter,
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
        // Only `reporter` is borrowed: the registration's drop may be taking its `fence`.
        // SAFETY: `this` is live, and its `reporter` is initialised before `info` is registered.
        let reporter = unsafe { &(*this).reporter };
        let Some(sg) = NonNull::new(sg) else {
            return EINVAL.to_errno();
        };
        // INVARIANT: The core passes a batch of `nents` isolated free pages, which it owns
        // until this call returns.
        let pages = FreePages {
            sg,
            nents,
            _call: PhantomData,
        };
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
