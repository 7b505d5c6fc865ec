// SPDX-License-Identifier: GPL-2.0

//! Virtqueues: the rings through which a driver lends buffers to its device.
//!
//! C header: [`include/linux/virtio.h`](srctree/include/linux/virtio.h)
//!
//! # Ownership
//!
//! Adding a [`Buffer`] moves it into the queue; [`QueueGuard::get_buf`] moves it back when the
//! device has used it, and dropping the [`Virtqueues`] drops whatever the device never returned.
//! The device is not trusted: it names used buffers by ring index, and the ring (`virtio_ring.c`)
//! maps an index to the token the driver added, refusing an index that is out of range or not in
//! flight (which also catches duplicates) and marking the queue broken. So each token comes back
//! at most once, and only one this queue was given. The used length the device reports is
//! clamped to the buffer's size. A queue may also carry free page hints
//! ([`QueueGuard::add_hint`]), which own nothing and come back as nothing.
//!
//! # Context and locking
//!
//! - Ring operations (add, kick, get_buf, callback control) need mutual exclusion per queue:
//!   each queue has a ring mutex, taken by [`Virtqueues::lock`], so they run in process context.
//!   The driver may let one mutex serialise several queues ([`QueueInfo::locked_with`]): a
//!   guard of one then reaches the others ([`QueueGuard::sibling`]) without taking another
//!   lock, and a queue can keep a buffer the driver's requests need ([`QueueGuard::replace_spare`])
//!   under the same lock.
//! - A thread holds one ring mutex at a time. All ring mutexes share one lockdep class, so
//!   lockdep reports a second one taken while the first is held (it could deadlock against a
//!   thread taking them in the other order); queues used together go into one group instead.
//! - Queue callbacks run in hard-IRQ context, from the moment `find_vqs` creates the queues,
//!   before the driver's probe has returned, until the queues are deleted. They only touch state
//!   initialised before `find_vqs`: the per-queue wait queue and the driver's [`Handler`].
//! - A callback first wakes the queue's waiters, under a per-queue IRQ-safe spin lock that
//!   [`QueueGuard::wait_buf`] holds from its check of the ring until it sleeps, so no wake-up is
//!   lost; then it calls [`Handler::used`].
//! - Transports number only the queues that exist: `vq->index` counts the named queues before
//!   it, so after an unused queue it is not the queue's position in the driver's list. The
//!   callback maps one to the other through a table made before `find_vqs`.
//!
//! # Waiting, broken rings and reset
//!
//! A wait for the device normally lasts until the device answers: the device is trusted to, and
//! may take its time. Once the driver is being unbound, a wait lasts at most [`UNBIND_GRACE`]
//! (from the later of its start and the unbind's): a device that has not answered by then is
//! reset, every waiter is woken, and the wait fails with `ETIMEDOUT`. Unbind therefore finishes
//! whatever the device does.
//!
//! A broken ring is not a stopped device: the device may still read and write what it was lent
//! (a bogus used id breaks the ring, and the device goes on). So a wait returns `EIO` for a
//! broken ring only once the device is reset, and only then may its caller reuse the memory.
//! Resets are ordered by `Quiesce`, one per device: the queues' deletion (freeze, remove, a
//! failed probe), shutdown, [`Device::reset`], and waiters. A waiter resets the device only while
//! one of the driver's callbacks given a `Device<Core>` runs (probe, freeze, restore, remove,
//! shutdown; see [`Device`]), or once unbind has started: the virtio core writes the status byte
//! only after those return, and they close the window under the same mutex first. At any other time
//! a reset could race the core's read-modify-write of the status and leave a device that never
//! reads back 0 (`vp_reset()` then polls for ever). Outside those windows a broken device therefore
//! keeps what it was lent, and its waiters sleep until a window opens; the driver's own `DRIVER_OK`
//! goes through the same mutex, and is not set on a device reset since its queues were created.
//!
//! Every notification is sent under the RCU read lock, and a reset breaks the rings, waits for
//! an RCU grace period, and only then resets: `virtio_reset_device()` must not run while a
//! notification is in progress. Transports whose notification sleeps (remoteproc with a
//! blocking mailbox) are therefore not supported.

use super::Device;
use crate::{
    alloc::Flags,
    bindings, device,
    devres::{
        Binding,
        UnbindFence, //
    },
    error::to_result,
    prelude::*,
    str::CStr,
    sync::{
        atomic::{
            Atomic,
            Relaxed, //
        },
        Arc,
        Mutex,
        MutexGuard, //
    },
    time::Delta,
    types::NotThreadSafe,
};
use core::{
    any::TypeId,
    cell::UnsafeCell,
    marker::{
        PhantomData,
        PhantomPinned, //
    },
    ptr::{
        addr_of,
        null,
        null_mut, //
    },
};

mod guard;
mod info;
mod quiesce;

pub(super) use self::quiesce::{
    begin_unbind,
    callback_window,
    forget_priv,
    live,
    quiesce_leaked,
    ready,
    reset,
    shutdown, //
};
use self::{
    guard::RawGuard,
    info::carries,
    quiesce::{
        kick,
        replace_priv,
        wait,
        Quiesce,
        Slot,
        When, //
    },
};
pub use self::{
    guard::{
        QueueGuard,
        Used, //
    },
    info::{
        Lent,
        QueueId,
        QueueInfo, //
    },
};
pub use super::buffer::Buffer;

/// A lending queue's token owns nothing; see [`Virtqueues::lend_and_wait`].
///
/// # Safety
///
/// None: the signature is that of [`drop_token`].
unsafe fn forget_token(_token: *mut c_void) {}

/// Memory described by a scatterlist, which its owner lends to a device for the duration of one
/// call to [`Virtqueues::lend_and_wait`].
///
/// # Safety
///
/// [`Lend::sg`] returns a valid scatterlist of `nents` entries (a chain, or ended with
/// `sg_mark_end`) over memory that no Rust code accesses while `self` is borrowed and that holds
/// no Rust value, so that no byte the device writes breaks a type's invariant. Whatever else
/// depends on what the device leaves there, the lender vouches for, for the device that
/// [`Lend::device`] names (any device if `None`).
pub unsafe trait Lend {
    /// The scatterlist and its number of entries.
    fn sg(&self) -> (*mut bindings::scatterlist, u32);

    /// The only device the memory may be lent to, if the lender vouches for one only;
    /// [`Virtqueues::lend_and_wait`] refuses any other with `EINVAL`.
    fn device(&self) -> Option<&device::Device> {
        None
    }
}

// What the allocator expects of a free page (the poison pattern, or zeroes after init-on-free)
// the registration's `ContentsKept` vouches for, for the device that made the registration.
#[cfg(CONFIG_PAGE_REPORTING)]
// SAFETY: The page reporting core's scatterlist is valid for `nents` entries (it ends it with
// `sg_mark_end`) over isolated free pages, which no Rust code accesses during the report call and
// which hold no Rust value; `device()` names the device `ContentsKept` vouches for (above).
unsafe impl Lend for crate::mm::page_reporting::FreePages<'_> {
    fn sg(&self) -> (*mut bindings::scatterlist, u32) {
        self.raw()
    }

    fn device(&self) -> Option<&device::Device> {
        Some(self.reporter_device())
    }
}

/// The token of every free page hint: a hint owns nothing, and the ring gives it back once.
static HINT: u8 = 0;

fn hint_token() -> *mut c_void {
    core::ptr::from_ref(&HINT).cast_mut().cast()
}

/// # Safety
///
/// `token` comes from `B::into_raw` and is not used again.
unsafe fn drop_token<B: Buffer>(token: *mut c_void) {
    // SAFETY: By the safety requirements of this function.
    drop(unsafe { B::from_raw(token) });
}

/// What a driver does when the device has used buffers of one of its queues.
///
/// [`Handler::used`] runs in hard-IRQ context, possibly before probe has returned: it must not
/// sleep, and it can only reach what the handler itself holds.
pub trait Handler: Sync {
    /// The device has used buffers of the queue at position `queue` ([`QueueId::index`]).
    /// Waiters are already woken.
    fn used(&self, queue: usize) {
        let _ = queue;
    }
}

/// For drivers that only wait for their buffers.
impl Handler for () {}

/// How long a wait for the device may last once the driver's unbind has started.
///
/// Generous: a device that answers may be slow (an emulated one under load can take a second
/// for a large request), and a dead one costs it only once, since the device is reset after it
/// and later waits fail at once.
pub const UNBIND_GRACE: Delta = Delta::from_millis(5000);

/// What the callbacks reach through `priv` without knowing the handler type: the first field of
/// [`Virtqueues`].
#[repr(C)]
struct Head {
    slots: Pin<KBox<[Slot]>>,
    quiesce: Arc<Quiesce>,
}

// `with_head` reads a `Virtqueues` of any handler type through `priv` as its `Head`.
const _: () = assert!(core::mem::offset_of!(Virtqueues<'static, ()>, core.head) == 0);

/// A pointer of a queue that only the holder of the queue's ring mutex reads or writes.
///
/// A plain cell rather than an atomic: the mutex already orders every access, and an atomic
/// costs a call into C on the paths that run for every request (twice per migrated page).
///
/// # Invariants
///
/// Shared, the pointer is only accessed by a thread that holds the ring mutex of its queue, in
/// one access at a time: through a guard of the queue ([`RawGuard`]), of which one at most is
/// usable (a sibling borrows its parent mutably), or by the queues' own code under that mutex.
struct RingCell<T>(UnsafeCell<*mut T>);

// SAFETY: Like a `Mutex`: only the ring mutex's holder reaches the pointer (type invariant), and
// what it points at may be used on any thread: a `struct virtqueue` is tied to no CPU, a spare is
// the token of a `Buffer`, which is `Send`.
unsafe impl<T> Send for RingCell<T> {}
// SAFETY: As above: a shared `RingCell` gives access to the pointer only under the ring mutex.
unsafe impl<T> Sync for RingCell<T> {}

impl<T> RingCell<T> {
    const fn null() -> Self {
        Self(UnsafeCell::new(null_mut()))
    }

    /// The pointer.
    ///
    /// # Safety
    ///
    /// The caller holds the ring mutex of the cell's queue, and makes no other access to the
    /// cell meanwhile (type invariant).
    #[inline]
    unsafe fn get(&self) -> *mut T {
        // SAFETY: No access to the cell overlaps this read (safety requirements).
        unsafe { *self.0.get() }
    }

    /// Replaces the pointer, and returns the old one.
    ///
    /// # Safety
    ///
    /// As for [`RingCell::get`].
    #[inline]
    unsafe fn replace(&self, ptr: *mut T) -> *mut T {
        // SAFETY: No access to the cell overlaps this one (safety requirements), and no
        // reference into it is kept.
        unsafe { self.0.get().replace(ptr) }
    }

    /// The pointer, for the queue's only owner.
    fn get_mut(&mut self) -> &mut *mut T {
        self.0.get_mut()
    }
}

/// One queue of the device: how it is created, and its ring while it exists.
///
/// # Invariants
///
/// `spare` is null, or a token from `into_raw` of the buffer type of `info`, owned by `self`.
struct Queue {
    info: QueueInfo,
    /// The position of the slot whose ring mutex serialises this queue: its own, or that of the
    /// queue given to [`QueueInfo::locked_with`].
    ring: usize,
    /// The ring; null for an unused queue and while the queues are frozen.
    vq: RingCell<bindings::virtqueue>,
    /// A buffer the driver keeps with the queue ([`QueueGuard::replace_spare`]); it stays through
    /// freeze and restore, and is dropped with the queue.
    spare: RingCell<c_void>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        let token = *self.spare.get_mut();
        let Some(buffer) = self.info.buffer else {
            return;
        };
        if token.is_null() {
            return;
        }
        // SAFETY: By the type invariants, `token` comes from `into_raw` of the queue's buffer type
        // and is ours, and nothing uses it after this.
        unsafe { (buffer.drop)(token) };
    }
}

/// A queue's `vq_callback_t`.
type VqCallback = unsafe extern "C" fn(*mut bindings::virtqueue);

/// The virtqueues of a device, and the handler of their notifications.
///
/// Creating it creates the queues (`find_vqs`); dropping it resets the device if it is still
/// live, drops every buffer the device did not return, and deletes the queues (`del_vqs`). A
/// device has at most one at a time. For system sleep, [`Virtqueues::freeze`] deletes the queues
/// and [`Virtqueues::restore`] creates them again.
///
/// Drop it where the device lock is held: in remove, or when probe fails. Dropped on another
/// thread, its reset may race the virtio core's status writes at the end of probe or restore,
/// which on virtio-pci can leave `vp_reset()` polling for ever.
///
/// # Invariants
///
/// - While `self` exists, until the fence's action has run, `dev`'s `priv` points at `self`; it
///   is cleared under the device's `vqs_list_lock` before `self` is freed.
/// - `handler` is initialised before the queues exist and outlives them.
#[repr(C)]
#[pin_data(PinnedDrop)]
pub struct Virtqueues<'a, H: Handler> {
    /// First, so that the unbind paths find its head through `priv` without knowing `H`.
    #[pin]
    core: Inner<'a>,
    #[pin]
    handler: H,
    fence: Option<UnbindFence>,
    // Interrupt handlers hold shared references into `self` while `drop` runs.
    #[pin]
    _pin: PhantomPinned,
}

/// What [`Virtqueues`] is without its handler, which every operation but the notification
/// callback works on: not generic, so that a driver's module does not carry a copy of it.
///
/// # Invariants
///
/// - `live` is whether the queues exist. While they do, `queues[i].vq` is queue `i` of `dev`, or
///   null if unused; while they do not, every `vq` is null. Every token in a queue, and its
///   spare, comes from `into_raw` of the type in `queues[i].info.buffer`.
/// - `queues[i].ring` is `i` or the position of a used queue whose own `ring` it is.
/// - `head` and `positions` are initialised before the queues exist and outlive them;
///   `positions[vq->index]` is the position of `vq` in `queues`.
/// - `callback` is the callback of every queue that has notifications.
/// - `self` is the `core` of a [`Virtqueues`], at its offset 0, which `dev`'s `priv` points at
///   until [`Inner::release`] clears it.
#[repr(C)]
#[pin_data]
struct Inner<'a> {
    /// First: the unbind paths find it through `priv`.
    head: Head,
    /// The position in `queues` of the queue the transport numbers `i` (`vq->index`).
    positions: KVec<usize>,
    dev: &'a Device<device::Bound>,
    queues: KVec<Queue>,
    live: Atomic<bool>,
    callback: VqCallback,
    // The initialiser of `Virtqueues` makes a `Pin<&mut Self>` of the core once it is written,
    // while a callback may hold shared references into `head` and `positions`. That reference
    // is never used, so it is no aliasing violation; being `!Unpin` keeps it from claiming
    // uniqueness all the same, and keeps a later use of it from being one.
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: The rings and the spares are reached only under their ring mutex, or in `drop`
// ([`RingCell`]); `virtqueue` operations may run on any CPU, and spares are `Buffer`s, which are
// `Send`. The fence's action may run on any thread that may sleep. `H: Handler + Send`.
unsafe impl<H: Handler + Send> Send for Virtqueues<'_, H> {}
// SAFETY: As above: shared access reaches a ring or a spare only under its ring mutex, and the
// rest of the state through atomics and locks. `H: Handler` is `Sync`.
unsafe impl<H: Handler> Sync for Virtqueues<'_, H> {}

impl<'a> Inner<'a> {
    /// The queues to create, and the transport's numbering of them, prepared before the
    /// initialiser runs: it may not borrow `queues`.
    fn prepare(queues: &[QueueInfo]) -> Result<(KVec<usize>, KVec<Queue>)> {
        let mut v = KVec::with_capacity(queues.len(), GFP_KERNEL)?;
        for (i, info) in queues.iter().enumerate() {
            // A queue's id must say where it is, or the driver's names would not be its queues.
            if info.name.is_some() && info.index != i {
                return Err(EINVAL);
            }
            v.push(
                Queue {
                    info: *info,
                    ring: Self::ring_of(queues, i)?,
                    vq: RingCell::null(),
                    spare: RingCell::null(),
                },
                GFP_KERNEL,
            )?;
        }
        Ok((Self::positions(queues)?, v))
    }

    /// The position of the slot whose ring mutex serialises queue `i` of `queues`: `EINVAL` if it
    /// is locked with a queue that does not exist, is unused, or is itself locked with another
    /// (one lock per group, so that no guard ever takes two), or if either is a lending queue.
    fn ring_of(queues: &[QueueInfo], i: usize) -> Result<usize> {
        let queue = &queues[i];
        // An unused queue locks nothing.
        let (Some(j), Some(_)) = (queue.lock, queue.name) else {
            return Ok(i);
        };
        let owner = queues.get(j).ok_or(EINVAL)?;
        let own_lock = owner.lock.is_none() || owner.lock == Some(j);
        if owner.name.is_none() || !own_lock || queue.is_lending() || owner.is_lending() {
            return Err(EINVAL);
        }
        Ok(j)
    }

    /// Creates the queues, with `callback` for their notifications.
    ///
    /// # Safety
    ///
    /// `this` is the `Virtqueues<H>` whose `core` field this initialises, and whose handler is
    /// initialised already; `callback` is `Virtqueues::<H>::callback`, which finds both through
    /// `priv`.
    unsafe fn new(
        dev: &'a Device<device::Bound>,
        parts: (KVec<usize>, KVec<Queue>),
        this: *mut c_void,
        callback: VqCallback,
    ) -> impl PinInit<Self, Error> + 'a {
        let init = move |slot: *mut Self| {
            // Only `PinInit::__init` of the initialiser `pin_init_from_closure` makes calls this.
            // SAFETY: `__init`'s caller guarantees what `raw_try_init` needs: `slot` is valid,
            // uninitialised, pinned memory, untouched after an error; the rest by ours.
            unsafe { Self::init(slot, dev, parts, this, callback) }
        };
        // SAFETY: `Inner::init` returns `Ok` only with every field of `slot` initialised, and
        // on an error leaves nothing of it initialised; it keeps the pinning invariants (see
        // its guarantees).
        unsafe { pin_init::pin_init_from_closure(init) }
    }

    /// [`Inner::new`]'s initialiser, out of line: a driver's module, where the initialiser of its
    /// `Virtqueues` is made, does not carry a copy of it (the saving is the generic
    /// initialiser's code; `inline(never)` only makes it explicit).
    ///
    /// Returns the result of a `try_pin_init!` initialiser run on `slot`: on `Ok` every field is
    /// initialised, on an error what was initialised is dropped again, and the value is pinned.
    ///
    /// # Safety
    ///
    /// As for `pin_init::raw_try_init` with `slot`, and as for [`Inner::new`] with the rest.
    #[inline(never)]
    unsafe fn init(
        slot: *mut Self,
        dev: &'a Device<device::Bound>,
        (positions, queues): (KVec<usize>, KVec<Queue>),
        this: *mut c_void,
        callback: VqCallback,
    ) -> Result {
        let count = queues.len();
        let init = try_pin_init!(Self {
            head: Head {
                slots: KBox::pin_slice(|_| Slot::new(), count, GFP_KERNEL)?,
                quiesce: Quiesce::new()?,
            },
            positions,
            dev,
            // `head` and `positions`, all that the callback touches with the handler, are
            // initialised at this point.
            // SAFETY: `this` is the `Virtqueues` whose core this is, and `callback` its callback
            // (safety requirements), which finds in it only what is initialised by now.
            queues: unsafe { Self::claim(dev, queues, this, callback) }?,
            live: Atomic::new(true),
            callback,
            _pin: PhantomPinned,
        }? Error);
        // SAFETY: By the safety requirements of this function.
        unsafe { pin_init::raw_try_init(slot, init) }
    }

    /// The transport's numbering of `queues`: it numbers only the named ones, in order.
    fn positions(queues: &[QueueInfo]) -> Result<KVec<usize>> {
        let mut v = KVec::with_capacity(queues.len(), GFP_KERNEL)?;
        for (i, _) in queues.iter().enumerate().filter(|(_, q)| q.name.is_some()) {
            v.push(i, GFP_KERNEL)?;
        }
        Ok(v)
    }

    /// Makes `this` the device's queue owner and creates `queues`.
    ///
    /// # Safety
    ///
    /// `this` points at the `Virtqueues` that owns `queues` until they are deleted, and the
    /// fields of it that `callback` uses are initialised.
    unsafe fn claim(
        dev: &Device<device::Bound>,
        mut queues: KVec<Queue>,
        this: *mut c_void,
        callback: VqCallback,
    ) -> Result<KVec<Queue>> {
        let vdev = dev.as_raw();

        // SAFETY: `vdev` is a valid `struct virtio_device`; its `priv` belongs to the driver,
        // and for Rust drivers to this abstraction, which clears it before probe. Non-null means
        // the device already has queues.
        if !unsafe { replace_priv(vdev, null_mut(), this) } {
            return Err(EBUSY);
        }
        // SAFETY: `priv` points at `this` (above), for which `callback` is made (safety
        // requirements).
        let vqs = unsafe { Self::find(dev, &queues, callback) }.inspect_err(|_| {
            // SAFETY: As above; on failure the transport has undone everything it did.
            unsafe { replace_priv(vdev, this, null_mut()) };
        })?;
        // Nobody else can see `queues` yet.
        for (queue, vq) in queues.iter_mut().zip(vqs) {
            *queue.vq.get_mut() = vq;
        }
        Ok(queues)
    }

    /// Creates the queues (`find_vqs`) and returns them.
    ///
    /// # Safety
    ///
    /// `dev`'s `priv` points at the `Virtqueues` that owns `queues` until they are deleted, whose
    /// fields that `callback` uses are initialised: the queues' interrupts may call it as soon
    /// as they exist.
    unsafe fn find(
        dev: &Device<device::Bound>,
        queues: &[Queue],
        callback: VqCallback,
    ) -> Result<KVec<*mut bindings::virtqueue>> {
        let mut infos = KVec::with_capacity(queues.len(), GFP_KERNEL)?;
        for q in queues.iter().map(|q| &q.info) {
            infos.push(
                bindings::virtqueue_info {
                    name: q.name.map_or(null(), CStr::as_char_ptr),
                    callback: if q.callback && q.name.is_some() {
                        Some(callback)
                    } else {
                        None
                    },
                    ctx: false,
                },
                GFP_KERNEL,
            )?;
        }
        let mut vqs = KVec::from_elem(null_mut(), queues.len(), GFP_KERNEL)?;

        // SAFETY: `dev` is valid and has no queues; `vqs` and `infos` hold `queues.len()`
        // entries, and the names are `'static`.
        to_result(unsafe {
            bindings::virtio_find_vqs(
                dev.as_raw(),
                queues.len() as u32,
                vqs.as_mut_ptr(),
                infos.as_mut_ptr(),
            )
        })?;
        Ok(vqs)
    }

    /// [`Virtqueues::freeze`]'s work.
    fn freeze(&self, dev: &Device<device::Core<'_>>) -> Result {
        // `dev` proves that one of the driver's `Core` callbacks runs, which the virtio core
        // calls one at a time, with no status write of its own meanwhile (see [`Device`]).
        if dev.as_raw() != self.dev.as_raw() {
            return Err(EINVAL);
        }
        self.delete();
        Ok(())
    }

    /// Breaks the rings, resets the device, wakes the waiters, drops the buffers and deletes
    /// the queues, if they exist. Callers run in one of the driver's `Core` callbacks (see
    /// [`Device`]), or own `self` (its drop, the fence's action at unbind).
    fn delete(&self) {
        if !self.live.load(Relaxed) {
            return;
        }
        let vdev = self.dev.as_raw();
        // Only with the device reset may a waiter return and its caller reuse the memory the
        // device had; `reset` wakes them once it is. A reset since the queues were created
        // (a waiter's, say) is enough: nothing set the status since. Remove, a failed probe
        // (where drivers drop their queues) and the fence's action at unbind hold the device
        // lock, and freeze holds the transport's during a sleep transition, when no unbind runs
        // (see `unbind_action`); dropped elsewhere, the reset may race the core (see the type's
        // docs).
        // SAFETY: `vdev` is a valid device with queues (`live`), those of `self.head.quiesce`,
        // and one of those callbacks runs (above).
        unsafe { self.head.quiesce.reset(vdev, When::Once) };
        for (ring, group) in self.groups() {
            // Waiters have left: the ring is broken. A group goes at once: a guard of one queue
            // never finds another of its group gone.
            let _ring = ring.lock();
            for (_, queue) in group {
                // SAFETY: We hold the queue's ring mutex, and no guard of it exists.
                let vq = unsafe { queue.vq.replace(null_mut()) };
                // SAFETY: `vq` was queue `queue` of the reset device, and is unreachable now.
                unsafe { reclaim(queue, vq) };
            }
        }
        // SAFETY: `vdev` has the queues `find_vqs` created for `self`, reset and unreachable;
        // `del_vqs` frees their interrupts.
        unsafe { del_vqs(vdev) };
        self.live.store(false, Relaxed);
    }

    /// Clears `priv`, under the lock `with_head` reads it under.
    fn release(&self) {
        let this = core::ptr::from_ref(self).cast_mut().cast();
        // SAFETY: `self.dev` is valid, and `priv` points at the `Virtqueues` whose core is
        // `self`, at its offset 0 (type invariant), and belongs to this abstraction.
        unsafe { replace_priv(self.dev.as_raw(), this, null_mut()) };
    }

    /// The fence's action, which deletes the queues: from their drop, or at unbind if they were
    /// leaked (or are being dropped meanwhile).
    ///
    /// # Safety
    ///
    /// `this` is the core of a `Virtqueues`, whose memory stays valid (it is being dropped, or
    /// was leaked); no freeze or restore runs meanwhile: freeze and restore borrow the
    /// `Virtqueues`, so they cannot run during its drop, and an unbind does not run during a
    /// system sleep transition (user space, which starts unbinds, is frozen; a transport's
    /// removal holds the transport's device lock, as its freeze does).
    unsafe fn unbind_action(this: *mut c_void) {
        // SAFETY: By the safety requirements.
        let this = unsafe { &*this.cast::<Self>() };
        this.delete();
        this.release();
    }

    /// [`Virtqueues::restore`]'s work.
    fn restore(&self, dev: &Device<device::Core<'_>>) -> Result {
        if dev.as_raw() != self.dev.as_raw() {
            return Err(EINVAL);
        }
        if self.live.load(Relaxed) {
            return Err(EBUSY);
        }
        // Before any ring exists that a waiter could find broken.
        // SAFETY: The queues are deleted (not `live`), and are created below, in the `Core`
        // callback `dev` proves.
        unsafe { self.head.quiesce.rearm() };
        // SAFETY: `priv` still points at the `Virtqueues` whose core is `self` (type invariant),
        // fully initialised, and `self.callback` is its callback.
        let vqs = unsafe { Self::find(self.dev, &self.queues, self.callback) }?;
        for (ring, group) in self.groups() {
            let _ring = ring.lock();
            for (i, queue) in group {
                // SAFETY: We hold the queue's ring mutex, and no guard of it exists.
                unsafe { queue.vq.replace(vqs[i]) };
            }
        }
        self.live.store(true, Relaxed);
        Ok(())
    }

    /// [`Virtqueues::ring_size`]'s work.
    fn ring_size(&self, index: usize) -> Result<usize> {
        let queue = self.queues.get(index).ok_or(EINVAL)?;
        if queue.info.name.is_none() {
            return Err(ENOENT);
        }
        let _ring = self.ring_lock(queue).lock();
        // SAFETY: We hold the queue's ring mutex, and no guard of it exists.
        let vq = unsafe { queue.vq.get() };
        if vq.is_null() {
            return Err(ENODEV);
        }
        // SAFETY: `vq` is a live queue (type invariant); we hold its ring mutex.
        Ok(unsafe { bindings::virtqueue_get_vring_size(vq) } as usize)
    }

    /// [`Virtqueues::lend_and_wait`]'s work.
    fn lend_and_wait(&self, index: usize, mem: &dyn Lend, flags: Flags) -> Result {
        let queue = self.queues.get(index).ok_or(EINVAL)?;
        let info = queue.info;
        // Without notifications nothing would end the wait.
        if !info.is_lending() || !info.callback {
            return Err(EINVAL);
        }
        // Memory whose lender vouches for one device only goes to that one.
        if mem
            .device()
            .is_some_and(|d| d.as_raw() != self.dev.as_ref().as_raw())
        {
            return Err(EINVAL);
        }
        let slot = &self.head.slots[index];
        let _ring = self.ring_lock(queue).lock();
        // SAFETY: We hold the queue's ring mutex, and no guard of it exists.
        let vq = unsafe { queue.vq.get() };
        if vq.is_null() {
            return Err(ENODEV);
        }
        let (sg, nents) = mem.sg();
        // The ring `BUG()`s on a buffer without entries, and `WARN()`s on one with more entries
        // than descriptors (without indirect descriptors, which it need not have).
        // SAFETY: `vq` is a live queue (type invariant); we hold its ring mutex.
        if nents == 0 || nents > unsafe { bindings::virtqueue_get_vring_size(vq) } {
            return Err(EINVAL);
        }
        // Any non-null token does: the ring lock makes this the only buffer in the queue.
        let token = core::ptr::from_ref(slot).cast_mut().cast::<c_void>();
        // SAFETY: `vq` is live and we hold its ring mutex; `sg` is valid for `nents` entries over
        // memory that stays lent until the device returns `token` (`Lend`).
        to_result(unsafe { bindings::virtqueue_add_inbuf(vq, sg, nents, token, flags.as_raw()) })?;
        // SAFETY: As above.
        unsafe { kick(vq) };
        let mut since = None;
        let mut len = 0u32;
        loop {
            // SAFETY: As above. Without `notify`: see `RawGuard::wait`.
            if !unsafe { bindings::virtqueue_get_buf(vq, &mut len) }.is_null() {
                return Ok(());
            }
            let notify = slot.notify.lock();
            // SAFETY: As above.
            if !unsafe { bindings::virtqueue_get_buf(vq, &mut len) }.is_null() {
                return Ok(());
            }
            // SAFETY: As above; `quiesce` belongs to the queues of `vq`.
            let Err(err) = (unsafe { wait(vq, slot, &self.head.quiesce, notify, &mut since) })
            else {
                continue;
            };
            // The ring maps its buffers for a DMA-API device until they are detached: detach
            // ours now, before the caller reuses the memory, not when the queues are deleted.
            // SAFETY: `wait` failed, so the device is reset, and we hold the ring mutex of `vq`.
            while !unsafe { bindings::virtqueue_detach_unused_buf(vq) }.is_null() {}
            return Err(err);
        }
    }

    /// The mutex that serialises the ring operations of `queue`.
    fn ring_lock(&self, queue: &Queue) -> &Mutex<()> {
        &self.head.slots[queue.ring].ring
    }

    /// Each ring mutex, with the queues it serialises and their positions.
    fn groups(&self) -> impl Iterator<Item = (&Mutex<()>, impl Iterator<Item = (usize, &Queue)>)> {
        let queues = &self.queues;
        (0..queues.len())
            .filter(move |&i| queues[i].ring == i)
            .map(move |i| {
                let group = queues.iter().enumerate().filter(move |(_, q)| q.ring == i);
                (&self.head.slots[i].ring, group)
            })
    }

    /// Queue `index`, if it carries the buffer type `id`.
    fn queue(&self, index: usize, id: TypeId) -> Result<&Queue> {
        let queue = self.queues.get(index).ok_or(EINVAL)?;
        carries(queue.info.buffer, id)?;
        Ok(queue)
    }

    /// [`Virtqueues::lock`]'s work, for the buffer type `id`.
    fn lock(&self, index: usize, id: TypeId) -> Result<RawGuard<'_>> {
        let ring = self.ring_lock(self.queue(index, id)?).lock();
        // SAFETY: `ring` is the ring mutex of queue `index`, which outlives the guard.
        unsafe { self.guard(index, Some(ring)) }
    }

    /// [`Virtqueues::try_lock`]'s work, for the buffer type `id`.
    fn try_lock(&self, index: usize, id: TypeId) -> Result<RawGuard<'_>> {
        let ring = self
            .ring_lock(self.queue(index, id)?)
            .try_lock()
            .ok_or(EBUSY)?;
        // SAFETY: As in `lock`.
        unsafe { self.guard(index, Some(ring)) }
    }

    /// A guard of queue `index`, whose ring mutex is `ring`, or is held by the caller's guard of
    /// another queue of its group if `ring` is `None`.
    ///
    /// # Safety
    ///
    /// `ring` is the locked mutex [`Inner::ring_lock`] gives for queue `index`; or it is `None`,
    /// and that mutex is held by a guard that is neither used nor dropped while the returned one
    /// lives.
    unsafe fn guard<'g>(
        &'g self,
        index: usize,
        ring: Option<MutexGuard<'g, ()>>,
    ) -> Result<RawGuard<'g>> {
        let queue = &self.queues[index];
        // SAFETY: The queue's ring mutex is held (safety requirements), and the one usable guard
        // of it, if any, is the caller's, which does not run meanwhile.
        let vq = unsafe { queue.vq.get() };
        if vq.is_null() {
            return Err(ENODEV);
        }
        // INVARIANT: `vq` is the live ring of queue `index`, whose ring mutex is held (safety
        // requirements), without which it does not change.
        Ok(RawGuard {
            _ring: ring,
            core: self,
            queue,
            vq,
            slot: &self.head.slots[index],
            quiesce: &self.head.quiesce,
        })
    }
}

impl<'a, H: Handler + 'a> Virtqueues<'a, H> {
    /// Creates the queues described by `queues` (queue `i` is `queues[i]`) with `handler` for
    /// their notifications, which may borrow for as long as `binding`, of `dev`, lasts.
    ///
    /// Notifications may arrive as soon as this returns, and before the device is marked ready.
    ///
    /// The initializer must run in the callback that `dev` is given to: queues are created where
    /// no status write of the virtio core can race their resets. It is not `Send`, so it cannot
    /// be kept in the driver data or handed to a work item to run later
    /// (`tests/test_compile_fail.py` checks that this does not compile):
    ///
    /// ```ignore
    /// // compile_fail: E0277
    /// use kernel::{device::{Bound, Core}, devres::Binding, virtio};
    ///
    /// fn later<T: Send>(init: T) -> T {
    ///     init
    /// }
    ///
    /// fn probe<'a>(dev: &virtio::Device<Core<'_>>, binding: Binding<'a, virtio::Device<Bound>>) {
    ///     let _ = later(virtio::Virtqueues::<()>::new(dev, binding, &[], ()));
    /// }
    /// ```
    ///
    /// Run in the callback:
    ///
    /// ```
    /// use kernel::{device::{Bound, Core}, devres::Binding, prelude::*, virtio};
    ///
    /// fn probe<'a>(
    ///     dev: &virtio::Device<Core<'_>>,
    ///     binding: Binding<'a, virtio::Device<Bound>>,
    /// ) -> Result<Pin<KBox<virtio::Virtqueues<'a, ()>>>> {
    ///     KBox::pin_init(virtio::Virtqueues::new(dev, binding, &[], ()), GFP_KERNEL)
    /// }
    /// ```
    pub fn new<E>(
        dev: &Device<device::Core<'_>>,
        binding: Binding<'a, Device<device::Bound>>,
        queues: &[QueueInfo],
        handler: impl PinInit<H, E> + 'a,
    ) -> impl PinInit<Self, Error> + 'a
    where
        Error: From<E>,
    {
        // `dev` proves a `Core` callback (no status write races ours), `binding` how long the
        // handler may borrow. The initializer holds `in_callback`, which is not `Send`, so that
        // it runs on the callback's thread, where the callback keeps `dev` valid.
        let same = dev.as_raw() == binding.device().as_raw();
        let in_callback = NotThreadSafe;
        let dev = binding.device();
        let parts = Inner::prepare(queues);

        try_pin_init!(&this in Self {
            // Before the queues exist: the callback uses it.
            handler <- {
                let _in_callback = in_callback;
                if !same {
                    return Err(EINVAL);
                }
                handler
            },
            // SAFETY: `core` of `this`, whose handler is initialised (above); the callback is
            // this type's.
            core <- unsafe { Inner::new(dev, parts?, this.as_ptr().cast(), Self::callback) },
            fence: {
                // The transport's reset and `del_vqs` stop the callbacks, as C drivers' remove
                // relies on (PCI and MMIO free the interrupts, which waits for a handler in
                // flight; a vDPA parent runs them under the lock its reset takes).
                // SAFETY: The queues were just created for `this`, in the callback (the
                // initializer is not `Send`); their callbacks stop (above) before pin-init drops
                // `core` and `handler`, which the callbacks use. `priv` points at `this`.
                let undo = || unsafe {
                    bindings::virtio_reset_device(dev.as_raw());
                    del_vqs(dev.as_raw());
                    replace_priv(dev.as_raw(), this.as_ptr().cast(), null_mut());
                };
                // SAFETY: `this` points at the queues being initialised; taking the address of
                // one of their fields reads nothing.
                let data = unsafe { &raw mut (*this.as_ptr()).core }.cast();
                let binding = Some(binding.generic());
                // SAFETY: Until the fence is dropped, in `drop`, `this` is live queues of `dev`,
                // and deleting them once, at unbind or in their drop, on any thread that may
                // sleep, ends their use.
                unsafe { UnbindFence::arm_opt(binding, Inner::unbind_action, data, undo) }?
            },
            _pin: PhantomPinned,
        }? Error)
    }

    /// The `vq_callback_t` of every queue, in hard-IRQ context.
    extern "C" fn callback(vq: *mut bindings::virtqueue) {
        // SAFETY: The transport only calls this with a valid queue of a live device.
        let (vdev, index) = unsafe { ((*vq).vdev, (*vq).index as usize) };
        // SAFETY: By the type invariants, the queue exists, so `priv` points at the
        // `Virtqueues` that created it.
        let this = unsafe { (*vdev).priv_ }.cast_const().cast::<Self>();
        // SAFETY: By the type invariants, `handler`, `head` and `positions` are initialised and
        // outlive the queues. Only shared references to these fields are made: `new()` may still
        // be writing the others.
        let (handler, slots, positions) = unsafe {
            (
                &*addr_of!((*this).handler),
                &*addr_of!((*this).core.head.slots),
                &*addr_of!((*this).core.positions),
            )
        };

        // The transport's index counts named queues only; the driver knows queues by position.
        let Some(&queue) = positions.get(index) else {
            return;
        };
        slots[queue].wake();
        handler.used(queue);
    }

    /// The handler given to [`Virtqueues::new`].
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Deletes the queues for system sleep, from [`Driver::freeze`](super::Driver::freeze).
    ///
    /// The rings are marked broken and the device is reset; then the waiters are woken, and a
    /// wait for a buffer the device will never return ends with `EIO`. Every buffer the device
    /// held goes back to its owner (is dropped), and the queues are deleted. Until
    /// [`Virtqueues::restore`], using a queue fails with `ENODEV`. Does nothing if the queues are
    /// already deleted; fails with `EINVAL` for another device.
    #[inline]
    pub fn freeze(&self, dev: &Device<device::Core<'_>>) -> Result {
        self.core.freeze(dev)
    }

    /// Creates the queues again after [`Virtqueues::freeze`], as [`Virtqueues::new`] did, from
    /// [`Driver::restore`](super::Driver::restore).
    ///
    /// The queues are empty: a driver that primes a queue does so again. Fails with `EBUSY` if
    /// the queues exist, and with `EINVAL` for another device.
    #[inline]
    pub fn restore(&self, dev: &Device<device::Core<'_>>) -> Result {
        self.core.restore(dev)
    }

    /// The size of queue `id`'s ring, in descriptors.
    #[inline]
    pub fn ring_size<B>(&self, id: QueueId<B>) -> Result<usize> {
        self.core.ring_size(id.index)
    }

    /// Lends the memory of `mem` to the device to write (an in-buffer) on lending queue `id`,
    /// and sleeps until the device gives it back.
    ///
    /// Waiting is what lets a borrow be lent: `mem` is borrowed for exactly as long as the
    /// device may use it. Fails with `EINVAL` if `mem` may only go to another device
    /// ([`Lend::device`]), if it has no entries or more than the ring has descriptors, or if the
    /// queue is not a [`QueueInfo::lending`] one with notifications; with `ENODEV` while the
    /// queues are frozen; with `EIO` once the ring is broken and the device reset; and with
    /// `ETIMEDOUT` if the unbind deadline passes. A ring that breaks while it is neither probe,
    /// freeze, restore, remove nor shutdown (when a reset could race the virtio core's status
    /// writes) keeps `mem`, and the wait goes on until one of those wakes it. In every case the
    /// device no longer has `mem` when this returns (see the module documentation).
    #[inline]
    pub fn lend_and_wait(&self, id: QueueId<Lent>, mem: &impl Lend, flags: Flags) -> Result {
        self.core.lend_and_wait(id.index, mem, flags)
    }

    /// Locks queue `id` for ring operations, with the ring lock it has, its own or the one it
    /// shares ([`QueueInfo::locked_with`]).
    ///
    /// Fails with `EINVAL` if there is no such queue or it carries another buffer type than
    /// `id` says (an id made up for another queue), with `ENOENT` if the queue is unused, and
    /// with `ENODEV` while the queues are frozen.
    #[inline]
    pub fn lock<B: Buffer>(&self, id: QueueId<B>) -> Result<QueueGuard<'_, B>> {
        // INVARIANT: `Inner::lock` checked that the queue carries `B`.
        Ok(QueueGuard {
            raw: self.core.lock(id.index, TypeId::of::<B>())?,
            _buffer: PhantomData,
        })
    }

    /// Locks queue `id` as [`Virtqueues::lock`] does, if its ring lock is free; fails with
    /// `EBUSY` if it is not. For paths that must not wait for the queue's other users, such as
    /// a migration callback while inflation holds the lock and waits for memory.
    #[inline]
    pub fn try_lock<B: Buffer>(&self, id: QueueId<B>) -> Result<QueueGuard<'_, B>> {
        // INVARIANT: `Inner::lock` checked that the queue carries `B`.
        Ok(QueueGuard {
            raw: self.core.try_lock(id.index, TypeId::of::<B>())?,
            _buffer: PhantomData,
        })
    }
}

#[pinned_drop]
impl<H: Handler> PinnedDrop for Virtqueues<'_, H> {
    fn drop(mut self: Pin<&mut Self>) {
        // SAFETY: `self` is `!Unpin`, so the `&mut` carries no uniqueness; only `fence` is
        // reached through it, which no callback touches.
        let fence = unsafe { UnbindFence::take(&raw mut self.as_mut().get_unchecked_mut().fence) };
        // The fence's action deletes the queues: now, or at an unbinding that started before
        // this drop (which waits for it).
        UnbindFence::end(fence, || {
            self.core.delete();
            self.core.release();
        });
    }
}

/// Deletes the queues of `vdev` (`config->del_vqs`, which C drivers also call through the op:
/// there is no wrapper) and frees their interrupts.
///
/// # Safety
///
/// `vdev` is a valid device whose queues were created by `find_vqs` and are no longer used.
unsafe fn del_vqs(vdev: *mut bindings::virtio_device) {
    // SAFETY: `vdev` is valid (safety requirements), and its `config` points at its transport's
    // operations while it exists; the adapter's probe refused a transport without `del_vqs`, so
    // it is there (the `else` is never taken).
    if let Some(del_vqs) = unsafe { (*(*vdev).config).del_vqs } {
        // SAFETY: By the safety requirements.
        unsafe { del_vqs(vdev) };
    }
}

/// Drops every buffer left in `vq`.
///
/// # Safety
///
/// `vq` is null or queue `queue` of a reset device, and no other thread uses it.
unsafe fn reclaim(queue: &Queue, vq: *mut bindings::virtqueue) {
    let Some(buffer) = queue.info.buffer else {
        return;
    };
    if vq.is_null() {
        return;
    }
    loop {
        // SAFETY: By the safety requirements of this function.
        let token = unsafe { bindings::virtqueue_detach_unused_buf(vq) };
        if token.is_null() {
            break;
        }
        if token == hint_token() {
            continue;
        }
        // SAFETY: By the type invariants, `token` comes from `into_raw` of the queue's
        // buffer type, and the ring hands it out once.
        unsafe { (buffer.drop)(token) };
    }
}

#[cfg(CONFIG_KUNIT)]
impl QueueInfo {
    /// For the KUnit suite: whether [`Virtqueues::lock`] would accept `B` for this queue.
    pub(super) fn check_carries<B: Buffer>(&self) -> Result {
        carries(self.buffer, TypeId::of::<B>())
    }

    /// For the KUnit suite: whether [`Virtqueues::new`] would accept this list of queues.
    pub(super) fn check_list(queues: &[QueueInfo]) -> Result {
        Inner::prepare(queues).map(|_| ())
    }

    /// For the KUnit suite: the position of the ring lock of each queue of a list that
    /// [`Virtqueues::new`] would accept.
    pub(super) fn check_rings(queues: &[QueueInfo]) -> Result<KVec<usize>> {
        let mut v = KVec::new();
        for q in Inner::prepare(queues)?.1.iter() {
            v.push(q.ring, GFP_KERNEL)?;
        }
        Ok(v)
    }
}
