// SPDX-License-Identifier: GPL-2.0

//! Waiting for the device, and the resets that end a wait on a broken ring.
//!
//! See the parent module's documentation ("Waiting, broken rings and reset") for the protocol;
//! this module implements it: the per-queue wait state the interrupt handler reaches
//! ([`Slot`]), the per-device ordering of resets and `DRIVER_OK` ([`Quiesce`]), and the entry
//! points the bus adapter calls from its callbacks.

use super::{
    Head,
    UNBIND_GRACE, //
};
use crate::{
    bindings, device, new_condvar, new_mutex, new_spinlock_irq,
    prelude::*,
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
        SpinLockIrq,
        SpinLockIrqGuard, //
    },
    time::{
        msecs_to_jiffies,
        Instant,
        Monotonic, //
    },
    virtio::Device,
};

/// The per-queue state the interrupt handler reaches.
///
/// # Invariants
///
/// `used` is waited on only with `notify` held, and notified only by [`Slot::wake`]: under
/// `notify`, [`CondVar::has_waiters`] is exact.
#[pin_data]
pub(super) struct Slot {
    /// Serialises the ring operations of this queue, and of those locked with it.
    #[pin]
    pub(super) ring: Mutex<()>,
    /// Orders a callback's wake-up after a waiter's last look at the ring.
    #[pin]
    pub(super) notify: SpinLockIrq<()>,
    /// Waited on only with `notify` held, and notified only by [`Slot::wake`]: so, under
    /// `notify`, [`CondVar::has_waiters`] is exact.
    #[pin]
    used: CondVar,
    /// Whether the driver is being unbound: waits are bounded from then on.
    unbinding: Atomic<bool>,
}

impl Slot {
    pub(super) fn new() -> impl PinInit<Self, Error> {
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
    pub(super) fn wake(&self) {
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
/// - `open` is true only while a callback of the driver given a `Device<Core>` runs, or once
///   the driver's unbind or shutdown has started (the virtio core writes no status after
///   either); it is cleared under `lock`.
#[pin_data]
pub(super) struct Quiesce {
    #[pin]
    lock: Mutex<()>,
    done: Atomic<bool>,
    /// Whether a waiter may reset the device.
    open: Atomic<bool>,
    /// Whether a waiter already said that it waits for a reset.
    told: Atomic<bool>,
}

impl Quiesce {
    pub(super) fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                lock <- new_mutex!(()),
                done: Atomic::new(false),
                // INVARIANT: Queues are made with a `Device<Core>`, inside one of the driver's
                // callbacks given it, which closes the window before it returns.
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
    /// `vdev` is a valid device, the one whose queues `self` belongs to. The caller runs in a
    /// callback of the driver given a `Device<Core>` (probe, freeze, restore, remove, shutdown),
    /// and closes the window before the callback returns unless unbind has started.
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
            // lock: the driver's `Core` callback, or the unbinding thread, keeps the virtio core
            // from writing the status meanwhile.
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
    /// (probe, remove and shutdown under the device lock; freeze and restore under the
    /// transport's, during a sleep transition, when no probe or unbind runs; see [`Device`]), or
    /// the driver is being unbound and the unbinding thread, which holds the device lock, waits
    /// for the caller.
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
        // As `virtio_synchronize_cbs()` (inline, so through the op as C does): the transport's
        // interrupt handlers in flight finish, and later ones see the rings broken. Not every
        // transport's reset waits for them (virtio-mmio's only writes the status).
        // SAFETY: `vdev` is valid, and its `config` points at its transport's operations.
        if let Some(synchronize_cbs) = unsafe { (*(*vdev).config).synchronize_cbs } {
            // SAFETY: `vdev` is valid; we run in process context, in no interrupt handler.
            unsafe { synchronize_cbs(vdev) };
        }
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
    pub(super) unsafe fn reset(&self, vdev: *mut bindings::virtio_device, when: When) {
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
    ///
    /// # Safety
    ///
    /// The queues of `self` are deleted, and the caller creates them again before it returns,
    /// in one of the driver's `Core` callbacks (see [`Device`]): no reset comes in between.
    pub(super) unsafe fn rearm(&self) {
        let _guard = self.lock.lock();
        // INVARIANT: `done` is false.
        self.done.store(false, Release);
        self.told.store(false, Relaxed);
    }
}

/// Whether [`Quiesce::stop`] stops a device again that was stopped since the queues were created.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum When {
    /// Always: shutdown, [`Device::reset`].
    Always,
    /// Only if nobody did: the queues' deletion, which also comes after a waiter's reset.
    Once,
}

/// Shuts `dev` down as the virtio core does for a driver without `shutdown()`
/// (`virtio_device_shutdown()`: break the rings, wait for callbacks, reset), ordered with the
/// resets of its waiters, and wakes them: they return `EIO`.
pub(in crate::virtio) fn shutdown(dev: &Device<device::CoreInternal<'_>>) {
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
pub(in crate::virtio) fn begin_unbind(dev: &Device<device::CoreInternal<'_>>) {
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
        // The window stays open: the virtio core writes no status after remove or shutdown
        // has started, but for the reset after remove, which this mutex orders.
        // SAFETY: `vdev` is valid and its queues are `quiesce`'s; we hold its lock (remove,
        // shutdown), and unbind or shutdown has started (above).
        unsafe { quiesce.set_open(vdev, true) };
    }
}

/// Opens (`open`) or closes the window in which the waiters of `dev`'s queues may reset it, at
/// the start and at the end of a callback of the driver during which the virtio core does not
/// touch the status (see the module documentation). Returns whether the device was reset since
/// its queues were created.
pub(in crate::virtio) fn callback_window(
    dev: &Device<device::CoreInternal<'_>>,
    open: bool,
) -> bool {
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
pub(in crate::virtio) fn live(dev: &Device<device::CoreInternal<'_>>) -> bool {
    // SAFETY: `dev` is a valid device.
    unsafe { quiesce_of(dev.as_raw()) }.is_some_and(|quiesce| !quiesce.done())
}

/// Resets `dev`, ordered with the resets of its queues' waiters ([`Device::reset`]).
pub(in crate::virtio) fn reset(dev: &Device<device::Core<'_>>) {
    let vdev = dev.as_raw();
    // SAFETY: `vdev` is a valid device.
    match unsafe { quiesce_of(vdev) } {
        // SAFETY: `vdev` is valid and its queues are `quiesce`'s; we run in a `Core` callback,
        // and `virtio_reset_device()` stops the device.
        Some(quiesce) => unsafe { quiesce.reset(vdev, When::Always) },
        // SAFETY: `vdev` is a valid device.
        None => unsafe { bindings::virtio_reset_device(vdev) },
    }
}

/// Sets `DRIVER_OK` on `dev`, ordered with the resets of its queues' waiters ([`Device::ready`]).
pub(in crate::virtio) fn ready(dev: &Device<device::Core<'_>>) {
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

/// Forgets what a driver bound before left in `dev`'s `priv` (a C driver's own pointer, say): from
/// probe on, `priv` is this abstraction's, null until the driver's queues are created.
pub(in crate::virtio) fn forget_priv(dev: &Device<device::CoreInternal<'_>>) {
    let vdev = dev.as_raw();
    // SAFETY: `vdev` is valid, and `vqs_list_lock` is an initialised spin lock of it. Nothing of
    // this driver is in `priv` yet (its probe runs), so no reader of this abstraction can find
    // anything there but null.
    unsafe {
        let lock = &raw mut (*vdev).vqs_list_lock;
        bindings::spin_lock(lock);
        (*vdev).priv_ = core::ptr::null_mut();
        bindings::spin_unlock(lock);
    }
}

/// Sets `vdev`'s `priv` to `new` if it is `old`, under the lock [`with_head`] reads it under;
/// returns whether it did.
///
/// # Safety
///
/// `vdev` is a valid device, whose `priv` belongs to this abstraction: it is null or points at
/// a live `Virtqueues` of `vdev` (see [`with_head`]), and `new` keeps it so.
pub(super) unsafe fn replace_priv(
    vdev: *mut bindings::virtio_device,
    old: *mut c_void,
    new: *mut c_void,
) -> bool {
    // SAFETY: `vdev` is valid; `vqs_list_lock` is an initialised spin lock of the device.
    unsafe {
        let lock = &raw mut (*vdev).vqs_list_lock;
        bindings::spin_lock(lock);
        let replaced = (*vdev).priv_ == old;
        if replaced {
            (*vdev).priv_ = new;
        }
        bindings::spin_unlock(lock);
        replaced
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
pub(super) unsafe fn kick(vq: *mut bindings::virtqueue) -> bool {
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
pub(super) unsafe fn wait(
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
/// [`Virtqueues`](super::Virtqueues) deletes its queues when dropped. A driver that leaks it
/// instead (`mem::forget`, a reference cycle) leaks its memory too, and other leaked parts of the
/// driver (a notifier, say) may still use the queues until their own fences end them at unbind.
///
/// Returns whether there were such queues; they are broken and the device reset.
pub(in crate::virtio) fn quiesce_leaked(dev: &Device<device::CoreInternal<'_>>) -> bool {
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
