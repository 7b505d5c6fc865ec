// SPDX-License-Identifier: GPL-2.0

//! Shrinkers: memory that a subsystem holds but gives back when the system needs it.
//!
//! C header: [`include/linux/shrinker.h`](srctree/include/linux/shrinker.h)
//!
//! Memory reclaim asks every registered shrinker how many objects it could free
//! ([`Shrinker::count`]), then asks it to free some ([`Shrinker::scan`]). Both run in reclaim
//! context, on whatever task is reclaiming: they must not allocate memory that could recurse into
//! reclaim, nor wait for anything that may be waiting for memory. The units are the shrinker's
//! own (pages, for a driver holding pages), and a shrinker may free more than it was asked.

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
    str::CStr,
    sync::Arc, //
};
use core::{
    marker::PhantomPinned,
    ptr::NonNull, //
};

/// `SHRINK_STOP` (`~0UL`, [`include/linux/shrinker.h`](srctree/include/linux/shrinker.h)):
/// nothing can be freed in this context.
const SHRINK_STOP: c_ulong = !0;

/// The highest count a shrinker reports: the value above it is `SHRINK_EMPTY`.
const SHRINK_LIMIT: c_ulong = !0 - 2;

/// What a shrinker frees.
pub trait Shrinker: Sync {
    /// How many objects could be freed now.
    fn count(&self) -> usize;

    /// Frees about `nr_to_scan` objects; returns how many were freed, or `None` if nothing can be
    /// freed in this context and reclaim should stop asking (`SHRINK_STOP`). Counts above
    /// `usize::MAX - 2` read as `usize::MAX - 2`, as do those of [`Shrinker::count`].
    fn scan(&self, nr_to_scan: usize) -> Option<usize>;
}

impl<T: Shrinker + Send + ?Sized> Shrinker for Arc<T> {
    fn count(&self) -> usize {
        T::count(self)
    }

    fn scan(&self, nr_to_scan: usize) -> Option<usize> {
        T::scan(self, nr_to_scan)
    }
}

/// A registered shrinker; dropping it unregisters it, waiting for running callbacks.
///
/// Its name shows in `/sys/kernel/debug/shrinker/<name>-<id>/` with `CONFIG_SHRINKER_DEBUG`. A
/// shrinker that borrows from a device binding is registered with [`Registration::new_for`]:
/// should the registration be leaked, it is freed when the device is unbound.
///
/// # Invariants
///
/// `shrinker` is registered, with the callbacks of `Self` and a `private_data` pointing at
/// `self`, from the end of initialisation until `drop` frees it, or `fence`'s action does.
///
/// # Examples
///
/// ```
/// use kernel::mm::shrinker::{Registration, Shrinker};
/// use kernel::sync::atomic::{Atomic, Relaxed};
///
/// /// Objects that cost nothing to free.
/// struct Cache(Atomic<usize>);
///
/// impl Shrinker for Cache {
///     fn count(&self) -> usize {
///         self.0.load(Relaxed)
///     }
///     fn scan(&self, nr_to_scan: usize) -> Option<usize> {
///         let held = self.0.load(Relaxed);
///         let freed = held.min(nr_to_scan);
///         self.0.store(held - freed, Relaxed);
///         Some(freed)
///     }
/// }
///
/// let reg = KBox::pin_init(
///     Registration::new(c"rust-doctest", Cache(Atomic::new(100))),
///     GFP_KERNEL,
/// )?;
/// assert_eq!(reg.shrinker().count(), 100);
/// # Ok::<(), Error>(())
/// ```
#[pin_data(PinnedDrop)]
pub struct Registration<S: Shrinker> {
    inner: S,
    shrinker: NonNull<bindings::shrinker>,
    fence: Option<UnbindFence>,
    // The shrinker's `private_data` points at `self`.
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: The registration only hands out `&S`, and `S: Sync`; the shrinker may be freed from
// any thread.
unsafe impl<S: Shrinker + Send> Send for Registration<S> {}

// SAFETY: As for `Send`; the `struct shrinker` is only used by the shrinker core.
unsafe impl<S: Shrinker> Sync for Registration<S> {}

impl<S: Shrinker + 'static> Registration<S> {
    /// Registers `inner`, which owns what it uses, as a shrinker named `name`.
    pub fn new(name: &'static CStr, inner: S) -> impl PinInit<Self, Error> {
        Self::init(name, inner, None)
    }
}

impl<S: Shrinker> Registration<S> {
    /// Registers `inner`, which may borrow for as long as `binding` lasts, as a shrinker named
    /// `name`.
    pub fn new_for<'a, D: AsRef<Device<Bound>>>(
        binding: Binding<'a, D>,
        name: &'static CStr,
        inner: S,
    ) -> impl PinInit<Self, Error> + 'a
    where
        S: 'a,
    {
        Self::init(name, inner, Some(binding.generic()))
    }

    fn init<'a>(
        name: &'static CStr,
        inner: S,
        binding: Option<Binding<'a>>,
    ) -> impl PinInit<Self, Error> + 'a
    where
        S: 'a,
    {
        try_pin_init!(&this in Self {
            inner,
            // `inner` is initialised: the callbacks may run as soon as this registers.
            shrinker: Self::register(name, this.as_ptr().cast())?,
            fence: {
                // SAFETY: `shrinker` was registered just before.
                let undo = || unsafe { bindings::shrinker_free(shrinker.as_ptr()) };
                let data = this.as_ptr().cast();
                // SAFETY: Until the fence is dropped, in `drop`, `this` is a live registration,
                // and freeing its shrinker once, on any thread that may sleep, ends every call to
                // `inner`.
                unsafe { UnbindFence::arm_opt(binding, Self::unbind_action, data, undo) }?
            },
            _pin: PhantomPinned,
        }? Error)
    }

    /// The fence's action, which ends the registration: from its drop, or at unbind if it was
    /// leaked (or is being dropped meanwhile).
    ///
    /// # Safety
    ///
    /// `this` is a `Registration<S>` with a registered shrinker, whose memory stays valid (it is
    /// being dropped, or was leaked).
    unsafe fn unbind_action(this: *mut c_void) {
        // SAFETY: By the safety requirements the shrinker is registered; freeing it waits for
        // running callbacks.
        unsafe { bindings::shrinker_free((*this.cast::<Self>()).shrinker.as_ptr()) };
    }

    fn register(name: &'static CStr, this: *mut c_void) -> Result<NonNull<bindings::shrinker>> {
        // SAFETY: `"%s"` with one string argument is a valid format for `name`, which lives
        // forever.
        let shrinker = unsafe {
            bindings::shrinker_alloc(0, crate::c_str!("%s").as_char_ptr(), name.as_char_ptr())
        };
        let shrinker = NonNull::new(shrinker).ok_or(ENOMEM)?;
        // SAFETY: `shrinker` is freshly allocated and not registered yet; `this` is the pinned
        // `Registration` being initialised, whose `inner` is initialised and which frees the
        // shrinker before `inner` is dropped.
        unsafe {
            let s = shrinker.as_ptr();
            (*s).count_objects = Some(Self::count_callback);
            (*s).scan_objects = Some(Self::scan_callback);
            (*s).private_data = this;
            bindings::shrinker_register(s);
        }
        Ok(shrinker)
    }

    /// The shrinker's own object.
    pub fn shrinker(&self) -> &S {
        &self.inner
    }

    /// # Safety
    ///
    /// `shrinker` is one that [`Registration::register`] registered for a live `Self`.
    unsafe fn inner<'a>(shrinker: *mut bindings::shrinker) -> &'a S {
        // SAFETY: By the safety requirements `private_data` points at a live `Self`, which stays
        // alive while a callback runs: dropping it waits for them.
        unsafe { &(*(*shrinker).private_data.cast::<Self>()).inner }
    }

    extern "C" fn count_callback(
        shrinker: *mut bindings::shrinker,
        _sc: *mut bindings::shrink_control,
    ) -> c_ulong {
        // SAFETY: The shrinker core only calls this for the shrinker `register` set it on.
        let inner = unsafe { Self::inner(shrinker) };
        // The two highest values mean `SHRINK_STOP` and `SHRINK_EMPTY` to the core.
        inner.count().min(SHRINK_LIMIT)
    }

    extern "C" fn scan_callback(
        shrinker: *mut bindings::shrinker,
        sc: *mut bindings::shrink_control,
    ) -> c_ulong {
        // SAFETY: The shrinker core only calls this for the shrinker `register` set it on.
        let inner = unsafe { Self::inner(shrinker) };
        // SAFETY: The core passes a valid `shrink_control` for the duration of the call.
        let nr_to_scan = unsafe { (*sc).nr_to_scan };
        // `None` is `SHRINK_STOP`, which bindgen cannot type; a count must not read as it.
        inner
            .scan(nr_to_scan)
            .map_or(SHRINK_STOP, |n| n.min(SHRINK_LIMIT))
    }
}

#[pinned_drop]
impl<S: Shrinker> PinnedDrop for Registration<S> {
    fn drop(mut self: Pin<&mut Self>) {
        // SAFETY: `self` is `!Unpin`, so the `&mut` carries no uniqueness; only `fence` is
        // reached through it, which no callback touches.
        let fence = unsafe { UnbindFence::take(&raw mut self.as_mut().get_unchecked_mut().fence) };
        // The fence's action, or without one: freeing the shrinker unregisters it and waits for
        // running callbacks, so none uses `inner` afterwards.
        UnbindFence::end(fence, || {
            // SAFETY: Without a fence, `shrinker` is registered for as long as `self` exists (type
            // invariant).
            unsafe { bindings::shrinker_free(self.shrinker.as_ptr()) };
        });
    }
}
