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
//! Resets are ordered by [`Quiesce`], one per device: the queues' deletion (freeze, remove, a
//! failed probe), shutdown, [`Device::reset`], and waiters. A waiter resets the device only
//! while one of the driver's callbacks that hold the device lock runs (probe, freeze, restore,
//! remove, shutdown), or once unbind has started: the virtio core writes the status byte only
//! after those return, and they close the window under the same mutex first. At any other time
//! a reset could race the core's read-modify-write of the status and leave a device that never
//! reads back 0 (`vp_reset()` then polls for ever). Outside those windows a broken device
//! therefore keeps what it was lent, and its waiters sleep until a window opens; the driver's
//! own `DRIVER_OK` goes through the same mutex, and is not set on a device reset since its
//! queues were created.
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
    new_condvar, new_mutex, new_spinlock_irq,
    prelude::*,
    str::CStr,
    sync::{
        atomic::{
            Acquire,
            Atomic,
            Relaxed,
            Release, //
        },
        rcu::{
            self,
            synchronize_rcu, //
        },
        Arc,
        CondVar,
        Mutex,
        MutexGuard,
        SpinLockIrq,
        SpinLockIrqGuard, //
    },
    time::{
        msecs_to_jiffies,
        Delta,
        Instant,
        Monotonic, //
    },
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
        null_mut,
        NonNull, //
    },
};

pub use super::buffer::Buffer;
use crate::mm::pages::Pages;

/// The buffer type of a queue, kept so the buffers can be given back and dropped as what they
/// are.
#[derive(Clone, Copy)]
struct BufferType {
    id: TypeId,
    drop: unsafe fn(*mut c_void),
}

/// Checks that a queue with buffer type `buffer` carries the type `id`: `ENOENT` for an unused
/// queue, `EINVAL` for another type.
fn carries(buffer: Option<BufferType>, id: TypeId) -> Result {
    match buffer {
        None => Err(ENOENT),
        Some(t) if t.id == id => Ok(()),
        Some(_) => Err(EINVAL),
    }
}

/// The buffer type of lending queues ([`QueueInfo::lending`]): no value of it exists, since
/// a lending queue carries memory the driver does not own, for the duration of a call.
pub enum Lent {}

/// A queue of a driver's [`Virtqueues`]: its position in the list given to
/// [`Virtqueues::new`], and the type of the buffers it carries.
///
/// A driver declares one constant per queue and names the queue by it everywhere: in its
/// [`QueueInfo`], to lock it, to ask its ring size. The buffer type then follows from the
/// name. The queues also check it when they are locked, as a safety net: an id is only a
/// number, which safe code may make up.
///
/// # Examples
///
/// ```
/// use kernel::{prelude::*, virtio::virtqueue::{Lent, QueueId, QueueInfo}};
///
/// const INFLATE: QueueId<KBox<[u32; 256]>> = QueueId::new(0);
/// const REPORTING: QueueId<Lent> = QueueId::new(1);
///
/// let queues = [
///     QueueInfo::new(INFLATE, c"inflate"),
///     QueueInfo::lending(REPORTING, c"reporting"),
/// ];
/// assert_eq!(INFLATE.index(), 0);
/// # let _ = queues;
/// ```
pub struct QueueId<B> {
    index: usize,
    _buffer: PhantomData<fn() -> B>,
}

impl<B> Clone for QueueId<B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for QueueId<B> {}

impl<B> QueueId<B> {
    /// The queue at position `index` of the driver's list.
    pub const fn new(index: usize) -> Self {
        Self {
            index,
            _buffer: PhantomData,
        }
    }

    /// The queue's position in the driver's list, as [`Handler::used`] reports it.
    pub const fn index(self) -> usize {
        self.index
    }
}

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

/// Describes one queue to create: its name, whether the device's notifications for it are
/// wanted, and the [`Buffer`] type it carries.
#[derive(Clone, Copy)]
pub struct QueueInfo {
    /// The position the driver says the queue has; checked by [`Virtqueues::new`].
    index: usize,
    name: Option<&'static CStr>,
    callback: bool,
    buffer: Option<BufferType>,
    hints: bool,
    /// The position of the queue whose ring lock serialises this one, if not its own.
    lock: Option<usize>,
}

impl QueueInfo {
    /// Queue `id`, named `name`, carrying buffers of type `B`, with notifications.
    pub fn new<B: Buffer>(id: QueueId<B>, name: &'static CStr) -> Self {
        Self {
            index: id.index,
            name: Some(name),
            callback: true,
            buffer: Some(BufferType {
                id: TypeId::of::<B>(),
                drop: drop_token::<B>,
            }),
            hints: false,
            lock: None,
        }
    }

    /// A queue through which the driver lends memory it does not own, for the duration of
    /// [`Virtqueues::lend_and_wait`]; it carries no [`Buffer`].
    pub fn lending(id: QueueId<Lent>, name: &'static CStr) -> Self {
        Self {
            index: id.index,
            name: Some(name),
            callback: true,
            buffer: Some(BufferType {
                id: TypeId::of::<Lent>(),
                drop: forget_token,
            }),
            hints: false,
            lock: None,
        }
    }

    /// A queue the device has but the driver does not use (e.g. the queue of a feature that was
    /// not negotiated); nothing is allocated for it.
    pub const fn unused() -> Self {
        Self {
            index: usize::MAX,
            name: None,
            callback: false,
            buffer: None,
            hints: false,
            lock: None,
        }
    }

    /// The same queue if `wanted` (its feature was negotiated, say), else [`QueueInfo::unused`].
    /// Last in a chain: what follows it applies to the unused queue too.
    pub const fn only_if(self, wanted: bool) -> Self {
        if wanted {
            self
        } else {
            Self::unused()
        }
    }

    /// The same queue without notifications: the driver only polls it.
    pub const fn without_callback(self) -> Self {
        Self {
            callback: false,
            ..self
        }
    }

    /// The same queue, which also carries free page hints ([`QueueGuard::add_hint`]).
    pub const fn with_hints(self) -> Self {
        Self {
            hints: true,
            ..self
        }
    }

    /// The same queue, serialised by the ring lock of queue `other` instead of a lock of its
    /// own: the driver chooses which queues one lock covers. A guard of either queue reaches the
    /// other ([`QueueGuard::sibling`]), so that a request that uses both takes one lock, as a C
    /// driver's one mutex covers the queues it serialises.
    ///
    /// `other` must be a used queue with a lock of its own, and neither may be a
    /// [`QueueInfo::lending`] queue, whose waits hold the lock where no guard can reach it
    /// ([`Virtqueues::new`] fails with `EINVAL` otherwise). As with any mutex, locking a queue
    /// while holding a guard of its group deadlocks: reach it with [`QueueGuard::sibling`].
    pub const fn locked_with<C>(self, other: QueueId<C>) -> Self {
        Self {
            lock: Some(other.index),
            ..self
        }
    }

    /// Whether this is a [`QueueInfo::lending`] queue.
    fn is_lending(&self) -> bool {
        matches!(self.buffer, Some(t) if t.id == TypeId::of::<Lent>())
    }
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

/// The per-queue state the interrupt handler reaches.
///
/// # Invariants
///
/// `used` is waited on only with `notify` held, and notified only by [`Slot::wake`]: under
/// `notify`, [`CondVar::has_waiters`] is exact.
#[pin_data]
struct Slot {
    /// Serialises the ring operations of this queue, and of those locked with it.
    #[pin]
    ring: Mutex<()>,
    /// Orders a callback's wake-up after a waiter's last look at the ring.
    #[pin]
    notify: SpinLockIrq<()>,
    /// Waited on only with `notify` held, and notified only by [`Slot::wake`]: so, under
    /// `notify`, [`CondVar::has_waiters`] is exact.
    #[pin]
    used: CondVar,
    /// Whether the driver is being unbound: waits are bounded from then on.
    unbinding: Atomic<bool>,
}

impl Slot {
    fn new() -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            ring <- new_mutex!(()),
            notify <- new_spinlock_irq!(()),
            used <- new_condvar!(),
            unbinding: Atomic::new(false),
        }? Error)
    }

    /// Whether the driver is being unbound; read with `notify` locked, which `begin_unbind`
    /// takes after setting it.
    fn unbinding(&self) -> bool {
        self.unbinding.load(Relaxed)
    }

    /// Sleeps until woken, with `notify` locked by the caller since its last look at the ring.
    ///
    /// While the driver is being unbound, the wait that started at `*since` (set on its first
    /// bounded sleep) lasts at most [`UNBIND_GRACE`]; returns `false` once that has passed.
    /// Each wait has its own grace period: a device that answers may take the time it needs
    /// for the many requests of a deflate at unbind.
    fn sleep(
        &self,
        notify: &mut SpinLockIrqGuard<'_, ()>,
        since: &mut Option<Instant<Monotonic>>,
    ) -> bool {
        if !self.unbinding() {
            self.used.wait(notify);
            return true;
        }
        let start = since.get_or_insert_with(Instant::now);
        let left = UNBIND_GRACE - start.elapsed();
        if left.as_nanos() <= 0 {
            return false;
        }
        let _ = self
            .used
            .wait_timeout(notify, msecs_to_jiffies(left.as_millis_ceil() as u32));
        true
    }

    /// Wakes the queue's waiters, after whatever they wait for happened.
    #[inline]
    fn wake(&self) {
        // A waiter holds `notify` from its last look at the ring until it is queued on `used`:
        // under it, nobody queued means nobody to wake (a device usually answers within the
        // notification, before its waiter looks). The wake-up itself comes after `notify` is
        // dropped, so that the woken waiter does not spin on it; a waiter queued in between
        // looked at the ring after this buffer was used.
        let waiters = {
            let _notify = self.notify.lock();
            self.used.has_waiters()
        };
        if waiters {
            self.used.notify_all();
        }
    }
}

/// Orders the resets and the `DRIVER_OK` of a device with queues, and tells waiters whether a
/// reset happened and whether they may reset.
///
/// A waiter whose ring broke must not return before the device is stopped (see the module
/// documentation); waiters of several queues may need that at once, and the callbacks reset
/// too. The mutex orders them. It is shared ([`Arc`]) so that the callbacks, which find it
/// through `priv` under a spin lock, can take the mutex after dropping that lock.
///
/// # Invariants
///
/// - While `done` is true, the device was broken and reset with no notification in progress,
///   after the queues were last created, and its status was not set since.
/// - `open` is true only while a callback of the driver that holds the device lock runs, or
///   once the driver's unbind has started; it is cleared under `lock`.
#[pin_data]
struct Quiesce {
    #[pin]
    lock: Mutex<()>,
    done: Atomic<bool>,
    /// Whether a waiter may reset the device.
    open: Atomic<bool>,
    /// Whether a waiter already said that it waits for a reset.
    told: Atomic<bool>,
}

impl Quiesce {
    fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                lock <- new_mutex!(()),
                done: Atomic::new(false),
                // INVARIANT: Queues are made with a `Device<Core>`, inside a callback that holds
                // the device lock, which closes the window before it returns.
                open: Atomic::new(true),
                told: Atomic::new(false),
            }),
            GFP_KERNEL,
        )
    }

    /// Whether the device was reset since the queues were created.
    fn done(&self) -> bool {
        self.done.load(Acquire)
    }

    /// Whether a waiter may reset the device now; read under a waiter's `notify`, which
    /// [`Quiesce::set_open`] takes after opening.
    fn open(&self) -> bool {
        self.open.load(Acquire)
    }

    /// Opens or closes the window in which waiters may reset `vdev`; opening wakes them.
    ///
    /// # Safety
    ///
    /// `vdev` is a valid device, the one whose queues `self` belongs to. The caller holds the
    /// device lock, in a callback of the driver (probe, freeze, restore, remove, shutdown), and
    /// closes the window before the callback returns unless unbind has started.
    ///
    /// Returns whether the device was reset since the queues were created, read under the
    /// same lock: closing the window at the end of probe or restore, a reset one must not be
    /// marked ready.
    unsafe fn set_open(&self, vdev: *mut bindings::virtio_device, open: bool) -> bool {
        let guard = self.lock.lock();
        // INVARIANT: By the safety requirements.
        self.open.store(open, Release);
        let done = self.done();
        drop(guard);
        if open {
            // SAFETY: `vdev` is valid.
            unsafe { for_each_slot(vdev, Slot::wake) };
        }
        done
    }

    /// Resets `vdev` for a waiter whose ring broke or whose grace period ended, if nobody did
    /// and the window is open; returns whether the device is reset now.
    ///
    /// # Safety
    ///
    /// `vdev` is a valid device, the one whose queues `self` belongs to.
    unsafe fn try_reset(&self, vdev: *mut bindings::virtio_device) -> bool {
        let guard = self.lock.lock();
        if !self.done() {
            if !self.open() {
                return false;
            }
            // SAFETY: `vdev` is valid; the window is open and cannot close while we hold the
            // lock: the callback that holds the device lock, or the unbinding thread, keeps the
            // virtio core from writing the status meanwhile.
            unsafe { self.stop_locked(vdev, || bindings::virtio_reset_device(vdev)) };
        }
        drop(guard);
        // SAFETY: `vdev` is valid.
        unsafe { for_each_slot(vdev, Slot::wake) };
        true
    }

    /// Sets `DRIVER_OK` on `vdev` unless it is set, or the device was reset since its queues
    /// were created (it would be ready without queues).
    ///
    /// # Safety
    ///
    /// `vdev` is a valid device, the one whose queues `self` belongs to, and its driver is bound.
    unsafe fn ready(&self, vdev: *mut bindings::virtio_device) {
        let _guard = self.lock.lock();
        if !self.done() {
            // SAFETY: By the safety requirements; a waiter's reset waits for `lock`.
            unsafe { ready_raw(vdev) };
        }
    }

    /// Breaks the rings of `vdev`, waits for the notifications in progress, and stops the device
    /// with `stop` (a reset, or `virtio_device_shutdown()`), unless `when` is [`When::Once`] and
    /// that was done already; then wakes every waiter, which finds its ring broken and the
    /// device stopped.
    ///
    /// # Safety
    ///
    /// `vdev` is a valid device, the one whose queues `self` belongs to, and `stop` stops it as
    /// `virtio_reset_device()` does. Nothing else sets the device's status meanwhile: the
    /// caller runs in one of the driver's callbacks, which the virtio core calls one at a time
    /// (probe and remove under the device lock; freeze and restore under the transport's,
    /// during a sleep transition, when no probe or unbind runs), or the driver is being unbound
    /// and the unbinding thread, which holds the device lock, waits for the caller.
    unsafe fn stop(&self, vdev: *mut bindings::virtio_device, when: When, stop: impl FnOnce()) {
        let guard = self.lock.lock();
        if when == When::Always || !self.done() {
            // SAFETY: By the safety requirements, with `lock` held.
            unsafe { self.stop_locked(vdev, stop) };
        }
        drop(guard);
        // SAFETY: `vdev` is valid.
        unsafe { for_each_slot(vdev, Slot::wake) };
    }

    /// [`Quiesce::stop`]'s work, with `lock` held.
    ///
    /// # Safety
    ///
    /// As for [`Quiesce::stop`]; the caller holds `lock`.
    unsafe fn stop_locked(&self, vdev: *mut bindings::virtio_device, stop: impl FnOnce()) {
        // SAFETY: `vdev` is a valid device (safety requirements); breaking a device without
        // queues does nothing.
        unsafe { bindings::virtio_break_device(vdev) };
        // Every notification is sent under the RCU read lock, and `virtqueue_notify()` checks
        // first that the ring is not broken ([`kick`]): after a grace period, none is in progress
        // and none starts, as `virtio_reset_device()` requires. Callers sleep (they took a
        // mutex), so they are not in an RCU read-side section.
        synchronize_rcu();
        stop();
        // INVARIANT: The device was just broken and stopped, with no notification in progress,
        // and `ready` takes `lock` before it sets the status.
        self.done.store(true, Release);
    }

    /// Resets `vdev` (see [`Quiesce::stop`]).
    ///
    /// # Safety
    ///
    /// As for [`Quiesce::stop`].
    unsafe fn reset(&self, vdev: *mut bindings::virtio_device, when: When) {
        // SAFETY: By the safety requirements; `virtio_reset_device()` needs a valid device.
        unsafe { self.stop(vdev, when, || bindings::virtio_reset_device(vdev)) };
    }

    /// Says once that `vdev`'s ring is broken and its waiters wait for a reset.
    ///
    /// # Safety
    ///
    /// `vdev` is a valid device.
    unsafe fn tell(&self, vdev: *mut bindings::virtio_device) {
        if self.told.xchg(true, Relaxed) {
            return;
        }
        // SAFETY: `vdev` is a valid device (safety requirements), and so is its `struct device`.
        let dev: &device::Device = unsafe { device::Device::from_raw(&raw mut (*vdev).dev) };
        dev_err!(
            dev,
            "a ring is broken: what the device was lent stays lent until it can be reset\n"
        );
    }

    /// The queues are about to be created again: nothing was reset since.
    fn rearm(&self) {
        let _guard = self.lock.lock();
        // INVARIANT: `done` is false.
        self.done.store(false, Release);
        self.told.store(false, Relaxed);
    }
}

/// Whether [`Quiesce::stop`] stops a device again that was stopped since the queues were created.
#[derive(Clone, Copy, PartialEq, Eq)]
enum When {
    /// Always: shutdown, [`Device::reset`].
    Always,
    /// Only if nobody did: the queues' deletion, which also comes after a waiter's reset.
    Once,
}

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
        unsafe {
            if !(*vdev).priv_.is_null() {
                return Err(EBUSY);
            }
            (*vdev).priv_ = this;
        }
        // SAFETY: `priv` points at `this` (above), for which `callback` is made (safety
        // requirements).
        let vqs = unsafe { Self::find(dev, &queues, callback) }.inspect_err(|_| {
            // SAFETY: As above; on failure the transport has undone everything it did.
            unsafe { (*vdev).priv_ = null_mut() };
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
        // `dev` proves that a driver callback runs: freeze and restore run one at a time, under
        // the transport's lock, while no probe or unbind does.
        if dev.as_raw() != self.dev.as_raw() {
            return Err(EINVAL);
        }
        self.delete();
        Ok(())
    }

    /// Breaks the rings, resets the device, wakes the waiters, drops the buffers and deletes
    /// the queues, if they exist. Callers hold the device lock or the only reference to `self`.
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
        let vdev = self.dev.as_raw();
        // SAFETY: `vdev` is valid, and `priv` points at the `Virtqueues` whose core is `self`
        // (type invariant); `vqs_list_lock` is an initialised spin lock of the device.
        unsafe {
            let lock = &raw mut (*vdev).vqs_list_lock;
            bindings::spin_lock(lock);
            (*vdev).priv_ = null_mut();
            bindings::spin_unlock(lock);
        }
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
        self.head.quiesce.rearm();
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
    pub fn new<E>(
        dev: &Device<device::Core<'_>>,
        binding: Binding<'a, Device<device::Bound>>,
        queues: &[QueueInfo],
        handler: impl PinInit<H, E> + 'a,
    ) -> impl PinInit<Self, Error> + 'a
    where
        Error: From<E>,
    {
        // `dev` proves that the device lock is held, `binding` how long the handler may borrow.
        let same = dev.as_raw() == binding.device().as_raw();
        let dev = binding.device();
        let parts = Inner::prepare(queues);

        try_pin_init!(&this in Self {
            // Before the queues exist: the callback uses it.
            handler <- {
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
                // SAFETY: The queues were just created for `this`; their callbacks stop (above)
                // before pin-init drops `core` and `handler`, which the callbacks use.
                let undo = || unsafe {
                    bindings::virtio_reset_device(dev.as_raw());
                    del_vqs(dev.as_raw());
                    (*dev.as_raw()).priv_ = null_mut();
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

/// Shuts `dev` down as the virtio core does for a driver without `shutdown()`
/// (`virtio_device_shutdown()`: break the rings, wait for callbacks, reset), ordered with the
/// resets of its waiters, and wakes them: they return `EIO`.
pub(super) fn shutdown(dev: &Device<device::CoreInternal<'_>>) {
    let vdev = dev.as_raw();
    // SAFETY: `vdev` is a valid `struct virtio_device`.
    let stop = || unsafe { bindings::virtio_device_shutdown(vdev) };
    // SAFETY: `vdev` is valid.
    match unsafe { quiesce_of(vdev) } {
        // SAFETY: We hold the device lock (shutdown); `stop` resets the device.
        Some(quiesce) => unsafe { quiesce.stop(vdev, When::Always, stop) },
        None => stop(),
    }
}

/// Starts the unbind of `dev`'s driver: from now on its waits for the device are bounded, and a
/// waiter may reset the device (see the module documentation); the waiters asleep now are woken
/// to notice.
pub(super) fn begin_unbind(dev: &Device<device::CoreInternal<'_>>) {
    let vdev = dev.as_raw();
    // SAFETY: `dev` is a valid device.
    unsafe {
        for_each_slot(vdev, |slot| {
            slot.unbinding.store(true, Relaxed);
            slot.wake();
        })
    };
    // SAFETY: `vdev` is a valid device.
    if let Some(quiesce) = unsafe { quiesce_of(vdev) } {
        // SAFETY: `vdev` is valid and its queues are `quiesce`'s; we hold its lock (remove,
        // shutdown), and unbind has started: the window stays open.
        unsafe { quiesce.set_open(vdev, true) };
    }
}

/// Opens (`open`) or closes the window in which the waiters of `dev`'s queues may reset it, at
/// the start and at the end of a callback of the driver during which the virtio core does not
/// touch the status (see the module documentation). Returns whether the device was reset since
/// its queues were created.
pub(super) fn callback_window(dev: &Device<device::CoreInternal<'_>>, open: bool) -> bool {
    let vdev = dev.as_raw();
    // SAFETY: `vdev` is a valid device.
    let Some(quiesce) = (unsafe { quiesce_of(vdev) }) else {
        return false;
    };
    // SAFETY: `vdev` is valid and its queues are `quiesce`'s; we run in one of the driver's
    // callbacks (probe, freeze, restore), which closes the window before it returns (callers).
    unsafe { quiesce.set_open(vdev, open) }
}

/// Whether `dev` has queues that are neither frozen nor reset: after a driver's freeze, a
/// device that would be suspended live.
pub(super) fn live(dev: &Device<device::CoreInternal<'_>>) -> bool {
    // SAFETY: `dev` is a valid device.
    unsafe { quiesce_of(dev.as_raw()) }.is_some_and(|quiesce| !quiesce.done())
}

/// Resets `dev`, ordered with the resets of its queues' waiters ([`Device::reset`]).
pub(super) fn reset(dev: &Device<device::Core<'_>>) {
    let vdev = dev.as_raw();
    // SAFETY: `vdev` is a valid device.
    match unsafe { quiesce_of(vdev) } {
        // SAFETY: `vdev` is valid and its queues are `quiesce`'s; we hold the device lock
        // (`Core`), and `virtio_reset_device()` stops the device.
        Some(quiesce) => unsafe { quiesce.reset(vdev, When::Always) },
        // SAFETY: `vdev` is a valid device.
        None => unsafe { bindings::virtio_reset_device(vdev) },
    }
}

/// Sets `DRIVER_OK` on `dev`, ordered with the resets of its queues' waiters ([`Device::ready`]).
pub(super) fn ready(dev: &Device<device::Core<'_>>) {
    let vdev = dev.as_raw();
    // SAFETY: `vdev` is a valid device.
    match unsafe { quiesce_of(vdev) } {
        // SAFETY: `vdev` is valid, bound (`Core`), and its queues are `quiesce`'s.
        Some(quiesce) => unsafe { quiesce.ready(vdev) },
        // SAFETY: As above; without queues, nothing else resets the device.
        None => unsafe { ready_raw(vdev) },
    }
}

/// Sets `DRIVER_OK` unless set.
///
/// # Safety
///
/// `vdev` is a valid device whose driver is bound, and no reset runs meanwhile.
unsafe fn ready_raw(vdev: *mut bindings::virtio_device) {
    // SAFETY: `vdev` is valid (safety requirements), and its `config` points at its
    // transport's operations; C reads the status through the op too (`virtio_device_ready()`).
    let Some(get_status) = (unsafe { (*(*vdev).config).get_status }) else {
        return;
    };
    // SAFETY: As above.
    let status = u32::from(unsafe { get_status(vdev) });
    if status & bindings::VIRTIO_CONFIG_S_DRIVER_OK == 0 {
        // SAFETY: As above; the check keeps the `WARN_ON()` in `virtio_device_ready()` from
        // firing.
        unsafe { bindings::virtio_device_ready(vdev) };
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

/// Calls `f` on the [`Head`] of `vdev`'s queues, if it has any, under `vqs_list_lock`.
///
/// # Safety
///
/// `vdev` is a valid device.
unsafe fn with_head<R>(
    vdev: *mut bindings::virtio_device,
    f: impl FnOnce(&Head) -> R,
) -> Option<R> {
    // SAFETY: `vdev` is valid. A non-null `priv` is a live `Virtqueues` (`repr(C)`, `head`
    // first), cleared under `vqs_list_lock` before it is freed (`release`): it stays alive while
    // we hold that lock.
    unsafe {
        let lock = &raw mut (*vdev).vqs_list_lock;
        bindings::spin_lock(lock);
        let head = (*vdev).priv_.cast_const().cast::<Head>();
        let r = head.as_ref().map(f);
        bindings::spin_unlock(lock);
        r
    }
}

/// Calls `f` on each slot of `vdev`'s queues, if it has any, under `vqs_list_lock`.
///
/// # Safety
///
/// `vdev` is a valid device.
unsafe fn for_each_slot(vdev: *mut bindings::virtio_device, f: impl Fn(&Slot)) {
    // SAFETY: By the safety requirements.
    unsafe { with_head(vdev, |head| head.slots.iter().for_each(f)) };
}

/// The [`Quiesce`] of `vdev`'s queues, if it has any.
///
/// # Safety
///
/// `vdev` is a valid device.
unsafe fn quiesce_of(vdev: *mut bindings::virtio_device) -> Option<Arc<Quiesce>> {
    // SAFETY: By the safety requirements.
    unsafe { with_head(vdev, |head| head.quiesce.clone()) }
}

/// Notifies the device of `vq`'s new buffers, under the RCU read lock that [`Quiesce::stop`]
/// waits for; returns `false` if the ring is broken or the notification failed.
///
/// # Safety
///
/// `vq` is a live queue, and its ring mutex is held for the caller.
#[inline]
unsafe fn kick(vq: *mut bindings::virtqueue) -> bool {
    let _rcu = rcu::read_lock();
    // SAFETY: By the safety requirements. `virtqueue_notify()` checks that the ring is not
    // broken, under the RCU read lock, and notifying does not sleep.
    unsafe { bindings::virtqueue_kick(vq) }
}

/// Waits once for `vq`, with `notify` locked since the caller found no used buffer in it.
///
/// Returns `Ok(())` when the caller should look at the ring again, or the error that ends the
/// wait: `EIO` for a broken ring, `ETIMEDOUT` when the unbind grace period ends first. An error
/// comes only once the device is reset ([`Quiesce::done`]): it can no longer reach what it was
/// lent. A waiter resets it itself only while the window is open (see the module
/// documentation); outside it, a broken ring's waiter sleeps until a reset or the window opens.
///
/// # Safety
///
/// `vq` is a live queue, its ring mutex is held for the caller, and `quiesce` belongs to its
/// queues.
unsafe fn wait(
    vq: *mut bindings::virtqueue,
    slot: &Slot,
    quiesce: &Quiesce,
    mut notify: SpinLockIrqGuard<'_, ()>,
    since: &mut Option<Instant<Monotonic>>,
) -> Result {
    // SAFETY: `vq` is live (safety requirements), and so is its device.
    let vdev = unsafe { (*vq).vdev };
    // SAFETY: As above.
    let err = if unsafe { bindings::virtqueue_is_broken(vq) } {
        // `Quiesce` sets `done` and `open`, then takes `notify` to wake us.
        if quiesce.done() {
            return Err(EIO);
        }
        if !quiesce.open() {
            // SAFETY: `vdev` is valid.
            unsafe { quiesce.tell(vdev) };
            slot.used.wait(&mut notify);
            return Ok(());
        }
        EIO
    } else if slot.sleep(&mut notify, since) {
        return Ok(());
    } else {
        // SAFETY: `vdev` is valid, and so is its `struct device`.
        let dev: &device::Device = unsafe { device::Device::from_raw(&raw mut (*vdev).dev) };
        dev_warn!(
            dev,
            "no answer within {} ms of unbind: resetting the device\n",
            UNBIND_GRACE.as_millis()
        );
        ETIMEDOUT
    };
    drop(notify);
    // SAFETY: `vdev` has queues, `quiesce`'s.
    if unsafe { quiesce.try_reset(vdev) } {
        return Err(err);
    }
    // The window closed meanwhile (it only can for a broken ring: the grace period runs out only
    // during unbind, when it stays open): look again.
    Ok(())
}

/// Breaks the queues the driver leaked, once its data is gone (after `remove()` or a failed
/// probe), and wakes their waiters: whatever still uses them gets `EIO` until the device is
/// unbound and their fence deletes them.
///
/// [`Virtqueues`] deletes its queues when dropped. A driver that leaks it instead
/// (`mem::forget`, a reference cycle) leaks its memory too, and other leaked parts of the driver
/// (a notifier, say) may still use the queues until their own fences end them at unbind.
///
/// Returns whether there were such queues; they are broken and the device reset.
pub(super) fn quiesce_leaked(dev: &Device<device::CoreInternal<'_>>) -> bool {
    let vdev = dev.as_raw();
    // SAFETY: `vdev` is a valid device.
    let Some(quiesce) = (unsafe { quiesce_of(vdev) }) else {
        return false;
    };
    dev_warn!(dev.as_ref(), "the driver leaked its virtqueues\n");
    // Reset here, under the device lock: the leaked waiters then find the reset done, and do not
    // reset the device themselves once the virtio core is setting its status again.
    // SAFETY: `vdev` is valid, and we hold the device lock (remove, or a failed probe).
    unsafe { quiesce.reset(vdev, When::Always) };
    true
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

/// A buffer the device has used, back in the driver's hands.
pub struct Used<B> {
    /// The buffer.
    pub buf: B,
    /// How many bytes the device says it wrote, at most the buffer's size.
    pub len: usize,
}

/// Exclusive access to one queue, for ring operations.
///
/// Adding and taking back buffers needs their type `B`; every other operation is the
/// non-generic guard's inside, which this forwards to. The inner guard is never handed out: two
/// guards of queues with different buffer types would hold the same type inside, and swapping
/// them would let a buffer of one type into the other queue. That does not compile
/// (`tests/test_compile_fail.py` checks it):
///
/// ```ignore
/// // compile_fail: E0614
/// use kernel::{prelude::*, virtio::virtqueue::QueueGuard};
///
/// fn swap(a: &mut QueueGuard<'_, KBox<[u32; 256]>>, b: &mut QueueGuard<'_, KBox<u64>>) {
///     core::mem::swap(&mut **a, &mut **b);
/// }
/// ```
///
/// The operations a guard offers take it whole:
///
/// ```
/// use kernel::{prelude::*, virtio::virtqueue::QueueGuard};
///
/// fn notify(vq: &mut QueueGuard<'_, KBox<[u32; 256]>>) -> bool {
///     vq.num_free() < vq.size() && vq.kick()
/// }
/// # let _ = notify;
/// ```
///
/// # Invariants
///
/// Every token in the queue of `raw`, and its spare, comes from `B::into_raw`.
pub struct QueueGuard<'a, B: Buffer> {
    raw: RawGuard<'a>,
    _buffer: PhantomData<B>,
}

/// Exclusive access to one queue for the ring operations that do not depend on its buffer type;
/// not generic, so that a driver's module does not carry a copy of them, but for the few lines
/// marked `#[inline]` that every request runs.
///
/// # Invariants
///
/// `vq` is the live ring of `queue`, a queue of `core`. Its ring mutex is held: by `_ring`, or,
/// for a sibling, by the guard it borrows mutably, so that one guard at most of that mutex is
/// usable at a time. `slot` and `quiesce` belong to `queue`.
struct RawGuard<'a> {
    _ring: Option<MutexGuard<'a, ()>>,
    core: &'a Inner<'a>,
    queue: &'a Queue,
    vq: *mut bindings::virtqueue,
    slot: &'a Slot,
    quiesce: &'a Quiesce,
}

impl<B: Buffer> QueueGuard<'_, B> {
    #[inline]
    fn add(&mut self, buf: B, len: usize, out: bool, flags: Flags) -> Result<(), (Error, B)> {
        let (start, size) = buf.region();
        if len == 0 || len > size {
            return Err((EINVAL, buf));
        }
        let token = buf.into_raw();
        // SAFETY: `start..start + len` is linear-map memory that stays valid while `token` is in
        // the ring (`Buffer` safety requirements), `token` is non-null and comes from
        // `B::into_raw`, as every token of this queue does (type invariant).
        match unsafe { self.raw.add(start, len as u32, token, out, flags) } {
            Ok(()) => Ok(()),
            // SAFETY: The ring did not take `token`, which came from `into_raw` above.
            Err(e) => Err((e, unsafe { B::from_raw(token) })),
        }
    }

    /// Lends the first `len` bytes of `buf` to the device to read.
    ///
    /// On failure (`ENOSPC` when the ring is full, `EIO` when it is broken, `EINVAL` for a bad
    /// length) the buffer comes back with the error.
    #[inline]
    pub fn add_outbuf(&mut self, buf: B, len: usize, flags: Flags) -> Result<(), (Error, B)> {
        self.add(buf, len, true, flags)
    }

    /// Lends all of `buf` to the device to write.
    #[inline]
    pub fn add_inbuf(&mut self, buf: B, flags: Flags) -> Result<(), (Error, B)> {
        let len = buf.region().1;
        self.add(buf, len, false, flags)
    }

    /// The buffer of a used token.
    ///
    /// # Safety
    ///
    /// `token` is a used token of this queue, which the ring hands out once.
    unsafe fn used(token: NonNull<c_void>, len: u32) -> Used<B> {
        // SAFETY: Every token of this queue comes from `B::into_raw` (type invariant), and the
        // ring hands each out once (see the module documentation).
        let buf = unsafe { B::from_raw(token.as_ptr()) };
        let len = (len as usize).min(buf.region().1);
        Used { buf, len }
    }

    /// Takes back a buffer the device has used, if any.
    #[inline]
    pub fn get_buf(&mut self) -> Option<Used<B>> {
        let (token, len) = self.raw.get()?;
        // SAFETY: `token` was just taken from the ring.
        Some(unsafe { Self::used(token, len) })
    }

    /// Sleeps until the device has used a buffer, and takes it back.
    ///
    /// Fails with `ENOENT` if the device holds no buffer of this queue, with `EIO` once the
    /// queue is broken and the device reset, and with `ETIMEDOUT` if the device does not answer
    /// within [`UNBIND_GRACE`] during unbind (see the module documentation). The buffers the
    /// device held stay in the queue until the queues are deleted. Notifications must be
    /// enabled; on a queue created without a callback nothing would end the wait, and this fails
    /// with `EINVAL` (poll it with [`QueueGuard::get_buf`]).
    #[inline]
    pub fn wait_buf(&mut self) -> Result<Used<B>> {
        let (token, len) = self.raw.wait()?;
        // SAFETY: `token` was just taken from the ring.
        Ok(unsafe { Self::used(token, len) })
    }

    /// Hints to the device that the memory of `block` is free, in an in-buffer over the block.
    ///
    /// The block stays the caller's: a hint owns nothing, and the block may be freed while the
    /// hint is still in the ring. That is the protocol of free page hinting (virtio 1.2,
    /// 5.5.6.6): the device only uses a hint to skip the pages while they are not written, and
    /// never writes them itself. A device without `ACCESS_PLATFORM` reaches all of guest memory
    /// in any case. Fails with `EINVAL` on a queue not made [`QueueInfo::with_hints`] and on a
    /// ring that maps its buffers for the device (`ACCESS_PLATFORM`, Xen), where a hinted
    /// block stays mapped until the hint comes back; and as [`QueueGuard::add_outbuf`]
    /// otherwise.
    #[inline]
    pub fn add_hint(&mut self, block: &Pages, flags: Flags) -> Result {
        self.raw.add_hint(block, flags)
    }

    /// Notifies the device of added buffers; returns `false` if the notification failed and the
    /// queue is broken.
    #[inline]
    pub fn kick(&mut self) -> bool {
        self.raw.kick()
    }

    /// Asks the device for notifications again; returns `false` if buffers were used meanwhile
    /// (poll them, they will not be notified).
    #[inline]
    pub fn enable_cb(&mut self) -> bool {
        self.raw.enable_cb()
    }

    /// Asks the device not to notify this queue (a hint).
    #[inline]
    pub fn disable_cb(&mut self) {
        self.raw.disable_cb()
    }

    /// The number of free descriptors.
    #[inline]
    pub fn num_free(&self) -> usize {
        self.raw.num_free()
    }

    /// The size of the ring, in descriptors.
    #[inline]
    pub fn size(&self) -> usize {
        self.raw.size()
    }

    /// Whether the ring is broken: the device misbehaved or is gone.
    #[inline]
    pub fn is_broken(&self) -> bool {
        self.raw.is_broken()
    }

    /// Queue `id`, which shares this queue's ring lock ([`QueueInfo::locked_with`]), for as long
    /// as this guard is not used: one lock taken covers a request that uses both. The queues of
    /// a group exist, or are frozen, together.
    ///
    /// Fails with `EINVAL` if there is no queue `id`, or it has another lock or carries another
    /// buffer type, and with `ENOENT` if it is unused.
    ///
    /// ```
    /// use kernel::{prelude::*, virtio::{virtqueue::QueueGuard, QueueId}};
    ///
    /// const DEFLATE: QueueId<KBox<[u32; 256]>> = QueueId::new(1);
    ///
    /// // `inflate` is a guard of the queue that `DEFLATE` is locked with.
    /// fn kick_both(inflate: &mut QueueGuard<'_, KBox<[u32; 256]>>) -> Result {
    ///     inflate.sibling(DEFLATE)?.kick();
    ///     inflate.kick();
    ///     Ok(())
    /// }
    /// # let _ = kick_both;
    /// ```
    ///
    /// The sibling borrows the guard: the guard is not used while it lives,
    ///
    /// ```ignore
    /// // compile_fail: E0499
    /// use kernel::{prelude::*, virtio::{virtqueue::QueueGuard, QueueId}};
    ///
    /// fn both(inflate: &mut QueueGuard<'_, KBox<u64>>, deflate: QueueId<KBox<u64>>) -> Result {
    ///     let mut deflate = inflate.sibling(deflate)?;
    ///     inflate.kick();
    ///     deflate.kick();
    ///     Ok(())
    /// }
    /// ```
    ///
    /// nor dropped, which would unlock the group:
    ///
    /// ```ignore
    /// // compile_fail: E0505
    /// use kernel::{prelude::*, virtio::{virtqueue::QueueGuard, QueueId}};
    ///
    /// fn outlive(inflate: QueueGuard<'_, KBox<u64>>, deflate: QueueId<KBox<u64>>) -> Result {
    ///     let mut inflate = inflate;
    ///     let mut deflate = inflate.sibling(deflate)?;
    ///     drop(inflate);
    ///     deflate.kick();
    ///     Ok(())
    /// }
    /// ```
    #[inline]
    pub fn sibling<C: Buffer>(&mut self, id: QueueId<C>) -> Result<QueueGuard<'_, C>> {
        // INVARIANT: `RawGuard::sibling` checked that the queue carries `C`.
        Ok(QueueGuard {
            raw: self.raw.sibling(id.index, TypeId::of::<C>())?,
            _buffer: PhantomData,
        })
    }

    /// Takes the buffer the queue keeps for the driver ([`QueueGuard::replace_spare`]), if any.
    #[inline]
    pub fn take_spare(&mut self) -> Option<B> {
        // SAFETY: Null is a valid token to store; we own what comes back.
        let token = unsafe { self.raw.swap_spare(null_mut()) };
        // SAFETY: The spare comes from `into_raw` of the queue's buffer type, `B` (type
        // invariant), and is ours now.
        NonNull::new(token).map(|t| unsafe { B::from_raw(t.as_ptr()) })
    }

    /// Gives `buf` to the queue to keep for the driver, and returns the spare it had: a buffer
    /// a request needs, kept under the lock that serialises the request, so that the request
    /// takes no other lock. It stays through [`Virtqueues::freeze`] and [`Virtqueues::restore`];
    /// the [`Virtqueues`] drop it.
    ///
    /// ```
    /// use kernel::{prelude::*, virtio::virtqueue::QueueGuard};
    ///
    /// // Sends the queue's spare buffer, and keeps it again once the device has read it.
    /// fn send(vq: &mut QueueGuard<'_, KBox<[u8; 64]>>) -> Result {
    ///     let buf = vq.take_spare().ok_or(EIO)?;
    ///     vq.add_outbuf(buf, 64, GFP_KERNEL).map_err(|(e, buf)| {
    ///         vq.replace_spare(buf);
    ///         e
    ///     })?;
    ///     vq.kick();
    ///     let used = vq.wait_buf()?;
    ///     vq.replace_spare(used.buf);
    ///     Ok(())
    /// }
    /// # let _ = send;
    /// ```
    #[inline]
    pub fn replace_spare(&mut self, buf: B) -> Option<B> {
        // SAFETY: The token comes from `into_raw` of `B`, the queue's buffer type (type
        // invariant), and is not used again; we own what comes back.
        let old = unsafe { self.raw.swap_spare(buf.into_raw()) };
        // SAFETY: As in `take_spare`.
        NonNull::new(old).map(|t| unsafe { B::from_raw(t.as_ptr()) })
    }
}

impl RawGuard<'_> {
    /// A guard of queue `index`, which must be locked with this one ([`QueueInfo::locked_with`])
    /// and carry the buffer type `id`; it borrows this guard's lock.
    #[inline]
    fn sibling(&mut self, index: usize, id: TypeId) -> Result<RawGuard<'_>> {
        let core = self.core;
        let queue = core.queues.get(index).ok_or(EINVAL)?;
        carries(queue.info.buffer, id)?;
        if queue.ring != self.queue.ring {
            return Err(EINVAL);
        }
        // SAFETY: Queue `index` has our ring mutex (checked above), which `self` holds and which
        // the returned guard borrows `self` for.
        unsafe { core.guard(index, None) }
    }

    /// Exchanges the queue's spare buffer for `token`; either may be null.
    ///
    /// # Safety
    ///
    /// `token` is null or comes from `into_raw` of the queue's buffer type, and is not used
    /// again; the caller owns what is returned.
    #[inline]
    unsafe fn swap_spare(&mut self, token: *mut c_void) -> *mut c_void {
        // INVARIANT: By the safety requirements, `token` is null or of the queue's buffer type.
        // SAFETY: The queue's ring mutex is held for this guard, the one usable guard of it
        // (type invariant), which `&mut self` keeps from doing anything else meanwhile.
        unsafe { self.queue.spare.replace(token) }
    }

    /// Adds one buffer of `len` bytes at `start` with `token`.
    ///
    /// # Safety
    ///
    /// `start..start + len` is linear-map memory that stays valid while `token` is in the ring,
    /// and `token` is non-null and of the queue's buffer type.
    unsafe fn add(
        &mut self,
        start: *mut u8,
        len: u32,
        token: *mut c_void,
        out: bool,
        flags: Flags,
    ) -> Result {
        let mut sg = core::mem::MaybeUninit::<bindings::scatterlist>::uninit();
        // SAFETY: `sg` is valid for writes, and `start..start + len` is linear-map memory (safety
        // requirements).
        unsafe { bindings::sg_init_one(sg.as_mut_ptr(), start.cast(), len) };
        // The ring maps `sg` before returning, so it may live on the stack; the memory it points
        // at stays valid while the token is in the ring (safety requirements).
        // SAFETY: `self.vq` is live and its ring mutex is held for this guard (type invariant),
        // `sg` is one initialised entry, and `token` is non-null.
        to_result(unsafe {
            if out {
                bindings::virtqueue_add_outbuf(self.vq, sg.as_mut_ptr(), 1, token, flags.as_raw())
            } else {
                bindings::virtqueue_add_inbuf(self.vq, sg.as_mut_ptr(), 1, token, flags.as_raw())
            }
        })
    }

    /// Takes a used token out of the ring, skipping hints, with the length the device wrote.
    #[inline]
    fn get(&mut self) -> Option<(NonNull<c_void>, u32)> {
        let mut len = 0u32;
        loop {
            // SAFETY: `self.vq` is live and exclusively ours (type invariant).
            let token = unsafe { bindings::virtqueue_get_buf(self.vq, &mut len) };
            // A used hint needs nothing done.
            if token != hint_token() {
                return NonNull::new(token).map(|t| (t, len));
            }
        }
    }

    /// [`QueueGuard::wait_buf`]'s work: inline for a device that answered within the
    /// notification, as most do, and out of line for a wait.
    #[inline]
    fn wait(&mut self) -> Result<(NonNull<c_void>, u32)> {
        if self.queue.info.callback {
            if let Some(used) = self.get() {
                return Ok(used);
            }
        }
        self.wait_slow()
    }

    /// [`RawGuard::wait`] once the device had not answered yet.
    fn wait_slow(&mut self) -> Result<(NonNull<c_void>, u32)> {
        // Without notifications nothing would end the wait.
        if !self.queue.info.callback {
            return Err(EINVAL);
        }
        let slot = self.slot;
        let mut since = None;
        loop {
            // A device usually answers within the notification: finding that needs no lock,
            // which is only there to order a wake-up after the look that precedes a sleep.
            if let Some(used) = self.get() {
                return Ok(used);
            }
            let notify = slot.notify.lock();
            if let Some(used) = self.get() {
                return Ok(used);
            }
            // With nothing in the queue there is nothing to wait for, nor to protect.
            if self.num_free() == self.size() {
                return Err(if self.is_broken() { EIO } else { ENOENT });
            }
            // SAFETY: `self.vq` is live and its ring mutex is held for this guard (type
            // invariant), and `self.quiesce` belongs to its queues.
            unsafe { wait(self.vq, slot, self.quiesce, notify, &mut since) }?;
        }
    }

    /// [`QueueGuard::add_hint`]'s work.
    fn add_hint(&mut self, block: &Pages, flags: Flags) -> Result {
        if !self.queue.info.hints {
            return Err(EINVAL);
        }
        // SAFETY: `self.vq` is live (type invariant), and so is its device.
        let mapped = unsafe {
            !bindings::virtqueue_dma_dev(self.vq).is_null() || !(*(*self.vq).vdev).map.is_null()
        };
        // A ring that maps its buffers (`ACCESS_PLATFORM`, Xen, a mapping transport) keeps a
        // hinted block mapped for the device until the hint comes back: freeing it before would
        // let the device write memory that has a new owner.
        if mapped {
            return Err(EINVAL);
        }
        let len = u32::try_from(block.len())?;
        let mut sg = core::mem::MaybeUninit::<bindings::scatterlist>::uninit();
        // SAFETY: `sg` is valid for writes; one entry over the block's pages, which `block`
        // keeps allocated for this call, is a valid scatterlist.
        unsafe {
            bindings::sg_init_table(sg.as_mut_ptr(), 1);
            bindings::sg_set_page(sg.as_mut_ptr(), block.as_raw(), len, 0);
        }
        // SAFETY: `self.vq` is live and its ring mutex is held for this guard (type invariant);
        // the ring maps `sg` before returning; the token is the hint sentinel, which owns nothing.
        to_result(unsafe {
            bindings::virtqueue_add_inbuf(self.vq, sg.as_mut_ptr(), 1, hint_token(), flags.as_raw())
        })
    }

    /// Notifies the device of added buffers; returns `false` if the notification failed and the
    /// queue is broken.
    #[inline]
    fn kick(&mut self) -> bool {
        // SAFETY: `self.vq` is live and exclusively ours (type invariant).
        unsafe { kick(self.vq) }
    }

    /// Asks the device for notifications again; returns `false` if buffers were used meanwhile
    /// (poll them, they will not be notified).
    fn enable_cb(&mut self) -> bool {
        // SAFETY: `self.vq` is live and exclusively ours (type invariant).
        unsafe { bindings::virtqueue_enable_cb(self.vq) }
    }

    /// Asks the device not to notify this queue (a hint).
    fn disable_cb(&mut self) {
        // SAFETY: `self.vq` is live and exclusively ours (type invariant).
        unsafe { bindings::virtqueue_disable_cb(self.vq) }
    }

    /// The number of free descriptors.
    fn num_free(&self) -> usize {
        // SAFETY: `self.vq` is live (type invariant); `num_free` only changes under the ring
        // mutex held for this guard.
        unsafe { (*self.vq).num_free as usize }
    }

    /// The size of the ring, in descriptors.
    fn size(&self) -> usize {
        // SAFETY: `self.vq` is live (type invariant).
        unsafe { bindings::virtqueue_get_vring_size(self.vq) as usize }
    }

    /// Whether the ring is broken: the device misbehaved or is gone.
    fn is_broken(&self) -> bool {
        // SAFETY: `self.vq` is live (type invariant).
        unsafe { bindings::virtqueue_is_broken(self.vq) }
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
