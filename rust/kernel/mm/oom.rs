// SPDX-License-Identifier: GPL-2.0

//! OOM notifiers: a last chance to free memory before the OOM killer picks a victim.
//!
//! C header: [`include/linux/oom.h`](srctree/include/linux/oom.h)
//!
//! The out-of-memory path calls every registered notifier, in process context, before it
//! selects a task to kill; a notifier that frees pages (a balloon deflating, for instance) may
//! spare that task. Notifiers run from a blocking notifier chain, so they may sleep, but they
//! run while the system is out of memory: they must not wait for memory themselves.

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
    error::to_result,
    ffi::{
        c_int,
        c_ulong,
        c_void, //
    },
    prelude::*,
    sync::Arc,
    types::Opaque,
};

/// What an OOM notifier does.
pub trait Handler: Sync {
    /// Where the notifier goes in the chain: higher runs first (`notifier_block.priority`).
    const PRIORITY: i32 = 0;

    /// The system is out of memory: free what you can, return how many pages you freed.
    fn out_of_memory(&self) -> usize;
}

impl<T: Handler + ?Sized + Send> Handler for Arc<T> {
    const PRIORITY: i32 = T::PRIORITY;

    fn out_of_memory(&self) -> usize {
        T::out_of_memory(self)
    }
}

impl<T: Handler + ?Sized> Handler for Pin<KBox<T>> {
    const PRIORITY: i32 = T::PRIORITY;

    fn out_of_memory(&self) -> usize {
        T::out_of_memory(self)
    }
}

/// A registered OOM notifier; dropping it unregisters it.
///
/// A handler that borrows from a device binding is registered with [`Registration::new_for`]:
/// should the registration be leaked, it is unregistered when the device is unbound.
///
/// # Invariants
///
/// `nb` is registered with `register_oom_notifier()` and its callback is `Self::notify`, for
/// as long as `self` exists, or until `fence` is dropped or revoked at unbind.
///
/// # Examples
///
/// ```
/// use kernel::{mm::oom, prelude::*};
///
/// struct Reserve;
///
/// impl oom::Handler for Reserve {
///     fn out_of_memory(&self) -> usize {
///         0
///     }
/// }
///
/// let notifier = KBox::pin_init(oom::Registration::new(Reserve), GFP_KERNEL)?;
/// drop(notifier);
/// # Ok::<(), Error>(())
/// ```
#[pin_data(PinnedDrop)]
pub struct Registration<H: Handler> {
    #[pin]
    nb: Opaque<bindings::notifier_block>,
    handler: H,
    fence: Option<UnbindFence>,
}

// SAFETY: The registration only hands out `&H`, and `H: Sync`; unregistering works from any thread.
unsafe impl<H: Handler + Send> Send for Registration<H> {}

// SAFETY: As for `Send`; the notifier block is only touched by the notifier chain's own locking.
unsafe impl<H: Handler> Sync for Registration<H> {}

impl<H: Handler + 'static> Registration<H> {
    /// Registers `handler`, which owns what it uses; it may be called before this returns.
    pub fn new(handler: H) -> impl PinInit<Self, Error> {
        Self::init(handler, None)
    }
}

impl<H: Handler> Registration<H> {
    /// Registers `handler`, which may borrow for as long as `binding` lasts; it may be called
    /// before this returns.
    pub fn new_for<'a, D: AsRef<Device<Bound>>>(
        binding: Binding<'a, D>,
        handler: H,
    ) -> impl PinInit<Self, Error> + 'a
    where
        H: 'a,
    {
        Self::init(handler, Some(binding.generic()))
    }

    fn init<'a>(handler: H, binding: Option<Binding<'a>>) -> impl PinInit<Self, Error> + 'a
    where
        H: 'a,
    {
        try_pin_init!(&this in Self {
            handler,
            nb <- Opaque::try_ffi_init(|nb: *mut bindings::notifier_block| {
                // SAFETY: `nb` is valid for writes and zeroed is its empty state.
                unsafe {
                    nb.write(core::mem::zeroed());
                    (*nb).notifier_call = Some(Self::notify);
                    (*nb).priority = H::PRIORITY;
                }
                // SAFETY: `nb` is initialised and pinned inside `this`, whose `handler` is
                // initialised already (fields are initialised in order); `drop` unregisters it.
                to_result(unsafe { bindings::register_oom_notifier(nb) })
            }),
            fence: {
                let undo = || {
                    // SAFETY: `nb` was registered just before.
                    let _ = unsafe { bindings::unregister_oom_notifier(nb.get()) };
                };
                let data = this.as_ptr().cast();
                // SAFETY: Until the fence is dropped, in `drop`, `this` is a live registration,
                // and unregistering it once, on any thread that may sleep, ends every call to
                // `handler`.
                unsafe { UnbindFence::arm_opt(binding, Self::unbind_action, data, undo) }?
            },
        }? Error)
    }

    /// The fence's action, which ends the registration: from its drop, or at unbind if it was
    /// leaked (or is being dropped meanwhile).
    ///
    /// # Safety
    ///
    /// `this` is a registered `Registration<H>`, whose memory stays valid (it is being dropped, or
    /// was leaked).
    unsafe fn unbind_action(this: *mut c_void) {
        let this = this.cast::<Self>();
        // SAFETY: By the safety requirements `nb` is registered; unregistering waits for running
        // callbacks.
        unsafe { bindings::unregister_oom_notifier(Opaque::cast_into(&raw const (*this).nb)) };
    }

    extern "C" fn notify(
        nb: *mut bindings::notifier_block,
        _: c_ulong,
        freed: *mut c_void,
    ) -> c_int {
        // SAFETY: The chain only calls this with the `nb` registered in `new`, embedded in a live
        // `Registration<H>` (it is unregistered before being dropped).
        let this = unsafe { crate::container_of!(Opaque::cast_from(nb).cast_mut(), Self, nb) };
        // Only `handler` is borrowed: the registration may still be initialising its `fence` (an
        // allocation of which may be what ran out of memory), or its drop taking it.
        // SAFETY: `this` is live, and its `handler` is initialised before `nb` is registered.
        let handler = unsafe { &(*this).handler };
        let pages = handler.out_of_memory();
        // SAFETY: `out_of_memory()` passes a pointer to its `unsigned long` count of freed pages.
        unsafe { *freed.cast::<c_ulong>() += pages as c_ulong };
        bindings::NOTIFY_OK as c_int
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }
}

#[pinned_drop]
impl<H: Handler> PinnedDrop for Registration<H> {
    fn drop(mut self: Pin<&mut Self>) {
        // SAFETY: `self` is `!Unpin`, so the `&mut` carries no uniqueness; only `fence` is
        // reached through it, which no callback touches.
        let fence = unsafe { UnbindFence::take(&raw mut self.as_mut().get_unchecked_mut().fence) };
        // The fence's action, or without one: unregistering waits for running callbacks (the
        // chain's rw semaphore), so none uses `handler` afterwards.
        UnbindFence::end(fence, || {
            // SAFETY: Without a fence, `nb` is registered for as long as `self` exists (type
            // invariant).
            unsafe { bindings::unregister_oom_notifier(self.nb.get()) };
        });
    }
}
