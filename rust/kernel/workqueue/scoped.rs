// SPDX-License-Identifier: GPL-2.0

//! Work items that borrow, and workqueues their owner allocates.
//!
//! C header: [`include/linux/workqueue.h`](srctree/include/linux/workqueue.h)
//!
//! [`Work`](super::Work) items are `'static`: the queue may run them at any time. A driver's work
//! often borrows its device instead, and C drivers cancel such work before the data it uses goes
//! away. A [`ScopedWork`] does the same in its drop: it disables the work item and waits for a
//! running instance, so its handler may borrow anything that outlives it. It always runs on the
//! one queue it was made for, so that waiting for it waits for every instance: a work item
//! queued on two queues may run on both at once. An [`OwnedQueue`] is a workqueue of the
//! driver's own (`alloc_workqueue()`), destroyed when dropped.

use super::Queue;
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
    sync::{
        Arc,
        LockClassKey, //
    },
    types::Opaque, //
};
use core::ptr::NonNull;

/// What a [`ScopedWork`] does when it runs, in process context.
pub trait ScopedHandler: Sync {
    /// Runs the work; never concurrently with itself.
    fn run(&self);
}

impl<T: ScopedHandler + Send + ?Sized> ScopedHandler for Arc<T> {
    fn run(&self) {
        T::run(self)
    }
}

/// The workqueue a [`ScopedWork`] runs on.
pub enum WorkQueue {
    /// A system workqueue, such as [`super::system_freezable`].
    System(&'static Queue),
    /// A workqueue of the work's own, destroyed after the work is disabled.
    Owned(OwnedQueue),
}

impl WorkQueue {
    fn get(&self) -> &Queue {
        match self {
            Self::System(q) => q,
            Self::Owned(q) => q,
        }
    }
}

/// A work item that may borrow: dropping it disables it and waits for it to finish.
///
/// # Invariants
///
/// `work` is initialised with `ScopedWork::run_callback` as its function, is only queued on
/// `queue`, and is disabled before `handler` and `queue` are dropped, or at the latest by
/// `fence`'s action if `self` is leaked.
///
/// # Examples
///
/// ```
/// use kernel::sync::atomic::{Atomic, Relaxed};
/// use kernel::workqueue::{self, new_scoped_work, ScopedHandler, WorkQueue};
///
/// struct Count(Atomic<u32>);
///
/// impl ScopedHandler for Count {
///     fn run(&self) {
///         self.0.add(1, Relaxed);
///     }
/// }
///
/// let queue = WorkQueue::System(workqueue::system());
/// let work = new_scoped_work!(Count(Atomic::new(0)), queue, "doctest");
/// let work = KBox::pin_init(work, GFP_KERNEL)?;
/// work.queue();
/// work.disable();
/// // Disabled: queueing does nothing.
/// assert!(!work.queue());
/// assert!(work.handler().0.load(Relaxed) <= 1);
/// # Ok::<(), Error>(())
/// ```
#[pin_data(PinnedDrop)]
pub struct ScopedWork<H: ScopedHandler> {
    #[pin]
    work: Opaque<bindings::work_struct>,
    handler: H,
    queue: WorkQueue,
    fence: Option<UnbindFence>,
}

// SAFETY: The work item may be queued and disabled from any thread; `H` is `Sync`, and `Send` for
// the handler to be dropped elsewhere.
unsafe impl<H: ScopedHandler + Send> Send for ScopedWork<H> {}

// SAFETY: Shared access only queues or disables the work item, which the workqueue core
// synchronises, or reaches `&H`, which is `Sync`.
unsafe impl<H: ScopedHandler> Sync for ScopedWork<H> {}

/// Creates a [`ScopedWork`] initialiser with the given handler, queue, name and a new lock
/// class; `for binding,` first for a handler that borrows for as long as a
/// [`Binding`](crate::devres::Binding) lasts.
#[macro_export]
macro_rules! new_scoped_work {
    (for $binding:expr, $handler:expr, $queue:expr $(, $name:literal)?) => {
        $crate::workqueue::ScopedWork::new_for(
            $binding,
            $handler,
            $queue,
            $crate::optional_name!($($name)?),
            $crate::static_lock_class!(),
        )
    };
    ($handler:expr, $queue:expr $(, $name:literal)?) => {
        $crate::workqueue::ScopedWork::new(
            $handler,
            $queue,
            $crate::optional_name!($($name)?),
            $crate::static_lock_class!(),
        )
    };
}
pub use new_scoped_work;

impl<H: ScopedHandler + 'static> ScopedWork<H> {
    /// A work item that runs `handler`, which owns what it uses, on `queue`; use
    /// [`new_scoped_work!`].
    pub fn new(
        handler: H,
        queue: WorkQueue,
        name: &'static CStr,
        key: Pin<&'static LockClassKey>,
    ) -> impl PinInit<Self, Error> {
        Self::init(handler, queue, None, name, key)
    }
}

impl<H: ScopedHandler> ScopedWork<H> {
    /// A work item that runs `handler`, which may borrow for as long as `binding` lasts, on
    /// `queue`: should the work item be leaked, it is disabled when the device is unbound. Use
    /// [`new_scoped_work!`]`(for binding, ...)`.
    pub fn new_for<'a, D: AsRef<Device<Bound>>>(
        binding: Binding<'a, D>,
        handler: H,
        queue: WorkQueue,
        name: &'static CStr,
        key: Pin<&'static LockClassKey>,
    ) -> impl PinInit<Self, Error> + 'a
    where
        H: 'a,
    {
        Self::init(handler, queue, Some(binding.generic()), name, key)
    }

    fn init<'a>(
        handler: H,
        queue: WorkQueue,
        binding: Option<Binding<'a>>,
        name: &'static CStr,
        key: Pin<&'static LockClassKey>,
    ) -> impl PinInit<Self, Error> + 'a
    where
        H: 'a,
    {
        try_pin_init!(&this in Self {
            handler,
            queue,
            // SAFETY: `init_work_with_key` initialises the work item in place; `run_callback`
            // expects it inside a `ScopedWork<H>`, which it is.
            work <- Opaque::ffi_init(|slot| unsafe {
                bindings::init_work_with_key(
                    slot,
                    Some(Self::run_callback),
                    false,
                    name.as_char_ptr(),
                    key.as_ptr(),
                )
            }),
            // SAFETY: Until the fence is dropped, in `drop`, `this` is a live work item, and
            // disabling it once, on any thread that may sleep, ends every run of `handler`.
            fence: unsafe {
                UnbindFence::arm_opt(binding, Self::unbind_action, this.as_ptr().cast(), || ())
            }?,
        }? Error)
    }

    /// The fence's action, which disables the work item: from its drop, or at unbind if it was
    /// leaked (or is being dropped meanwhile).
    ///
    /// # Safety
    ///
    /// `this` is an initialised `ScopedWork<H>`, whose memory stays valid (it is being dropped,
    /// or was leaked).
    unsafe fn unbind_action(this: *mut c_void) {
        // SAFETY: By the safety requirements `work` is an initialised work item.
        unsafe {
            bindings::disable_work_sync(Opaque::cast_into(&raw const (*this.cast::<Self>()).work))
        };
    }

    /// Queues the work on its queue; returns `false` if it was pending already, or is disabled.
    /// Callable from any context.
    pub fn queue(&self) -> bool {
        // INVARIANT: The work is only ever queued on `self.queue`.
        // SAFETY: `work` is initialised (type invariant) and pinned in `self`, which disables it
        // before it is dropped; `self.queue` is a valid workqueue that outlives the work.
        unsafe {
            bindings::queue_work_on(
                bindings::wq_misc_consts_WORK_CPU_UNBOUND as c_int,
                self.queue.get().0.get(),
                self.work.get(),
            )
        }
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Disables the work and waits for a running instance: it does not run again.
    pub fn disable(&self) {
        // SAFETY: `work` is initialised (type invariant).
        unsafe { bindings::disable_work_sync(self.work.get()) };
    }

    extern "C" fn run_callback(work: *mut bindings::work_struct) {
        // SAFETY: By the type invariant only a `ScopedWork<H>` installs this function for its
        // `work`, which it disables before dropping `handler`.
        let this = unsafe { &*crate::container_of!(Opaque::cast_from(work), Self, work) };
        this.handler.run();
    }
}

#[pinned_drop]
impl<H: ScopedHandler> PinnedDrop for ScopedWork<H> {
    fn drop(mut self: Pin<&mut Self>) {
        // SAFETY: `self` is `!Unpin`, so the `&mut` carries no uniqueness; only `fence` is
        // reached through it, which no callback touches.
        let fence = unsafe { UnbindFence::take(&raw mut self.as_mut().get_unchecked_mut().fence) };
        // The fence's action disables the work, as this does without one.
        UnbindFence::end(fence, || self.disable());
    }
}

/// A workqueue its owner allocated; dropping it destroys it, waiting for the work on it.
///
/// # Invariants
///
/// `0` is a workqueue from `alloc_workqueue()`, owned by `self`.
pub struct OwnedQueue(NonNull<bindings::workqueue_struct>);

// SAFETY: A workqueue may be used and destroyed from any thread.
unsafe impl Send for OwnedQueue {}

// SAFETY: Queueing work is thread-safe.
unsafe impl Sync for OwnedQueue {}

/// Flags of an [`OwnedQueue`] (`WQ_*`).
#[derive(Clone, Copy)]
pub struct QueueFlags(u32);

impl QueueFlags {
    /// Work runs on the CPU it was queued on (`WQ_PERCPU`); 7.3 wants either this or
    /// [`QueueFlags::UNBOUND`].
    pub const PERCPU: Self = Self(bindings::wq_flags_WQ_PERCPU);
    /// Work runs on any CPU (`WQ_UNBOUND`).
    pub const UNBOUND: Self = Self(bindings::wq_flags_WQ_UNBOUND);
    /// Work does not run while the system is frozen for sleep (`WQ_FREEZABLE`).
    pub const FREEZABLE: Self = Self(bindings::wq_flags_WQ_FREEZABLE);
    /// Work may hog the CPU; it does not count against concurrency (`WQ_CPU_INTENSIVE`).
    pub const CPU_INTENSIVE: Self = Self(bindings::wq_flags_WQ_CPU_INTENSIVE);
}

impl core::ops::BitOr for QueueFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl OwnedQueue {
    /// Allocates a workqueue named `name` (`max_active` 0: the default).
    pub fn new(name: &'static CStr, flags: QueueFlags, max_active: i32) -> Result<Self> {
        // SAFETY: `"%s"` with one string argument, `name`, is a valid format (the workqueue
        // copies the name). The allocation is tagged as `alloc_workqueue()` tags it, at the
        // helper's line for every Rust caller.
        let wq = unsafe {
            bindings::alloc_workqueue(
                c"%s".as_char_ptr(),
                flags.0,
                max_active,
                name.as_char_ptr().cast(),
            )
        };
        // INVARIANT: A non-null result is a workqueue that is ours.
        Ok(Self(NonNull::new(wq).ok_or(ENOMEM)?))
    }
}

impl core::ops::Deref for OwnedQueue {
    type Target = Queue;

    fn deref(&self) -> &Queue {
        // SAFETY: `self.0` is a valid workqueue until `self` is dropped (type invariant).
        unsafe { Queue::from_raw(self.0.as_ptr()) }
    }
}

impl Drop for OwnedQueue {
    fn drop(&mut self) {
        // SAFETY: `self.0` is a workqueue we allocated (type invariant); destroying it drains it.
        unsafe { bindings::destroy_workqueue(self.0.as_ptr()) };
    }
}
