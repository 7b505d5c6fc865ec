// SPDX-License-Identifier: GPL-2.0

//! The driver data as the virtio adapter keeps it: the driver's data and its deferred work.
//!
//! C header: [`include/linux/workqueue.h`](srctree/include/linux/workqueue.h)
//!
//! A virtio driver learns of events where it cannot sleep (a queue callback runs in hard-IRQ
//! context, [`Driver::config_changed`] under a spin lock) and acts on them where it can. C
//! drivers embed a `work_struct` in their private data and must remember to cancel it in
//! `remove()` before that data goes away. Here the adapter owns the work item: it sits beside
//! the driver's data in [`Private`], runs [`Driver::work`], and is disabled before
//! [`Driver::unbind`], so the work never runs concurrently with unbind nor outlives the data it
//! borrows.
//!
//! # Lifetime of the work item
//!
//! - [`Device::schedule_work`] finds the work item through the device's driver data pointer,
//!   which is only published once [`Private`] is fully initialised, and queues it only after
//!   the virtio core's last status write of probe: it sets `DRIVER_OK` after the driver's probe
//!   if the driver did not, and a work running meanwhile could touch the device before that, or
//!   reset it while the core reads and writes back its status. Until then it queues nothing,
//!   and the adapter runs the work once from `scan`, which the core calls after that write; a
//!   driver whose work looks at its own state rather than at why it was scheduled loses no
//!   event.
//! - Remove disables the work item (waiting for a running instance) before [`Driver::unbind`].
//!   Scheduling it after that does nothing.
//! - [`Device::schedule_work`] may be called by anything that holds the bound device: adapter
//!   callbacks, parts of the driver data, but also registrations a driver leaked, which run
//!   until their fences act, after remove. It reads the driver data pointer and queues the work
//!   inside one RCU read-side critical section; remove clears the pointer, waits for a grace
//!   period, and only then frees the driver data. A caller either finds the pointer cleared or
//!   queues on a work item that is still allocated (and disabled, so nothing runs).
//!
//! # Wakeup source
//!
//! While the work is pending or running, the device holds its wakeup source (`pm_stay_awake()`),
//! so that the system does not suspend in the middle of what the work does: a balloon that
//! resizes in many steps, say. This only has an effect on a device the driver made
//! wakeup-capable ([`Device::set_wakeup_capable`]) and user space enabled
//! (`power/wakeup`). Scheduling takes the source after queueing; the work lets it go only when
//! not queued again, and takes it back if it was queued meanwhile, so a pending work always
//! holds it. A scheduling that races with remove may take it after the work was disabled, so
//! remove lets it go once more at the end.

use super::{
    Device,
    Driver, //
};
use crate::{
    bindings,
    device,
    devres::Gate,
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
        }, //
    },
    types::{
        ForeignOwnable,
        Opaque, //
    }, //
};
use core::ptr::NonNull;

/// The driver data of a device bound to a Rust virtio driver.
///
/// `repr(C)` keeps `head`, and its `work`, at offset 0, so that [`Device::schedule_work`], which
/// does not know `T`, finds the work item from the driver data pointer.
#[repr(C)]
#[pin_data(PinnedDrop)]
pub struct Private<'bound, T: Driver> {
    #[pin]
    head: DataHead<'bound>,
    #[pin]
    data: T::Data<'bound>,
}

/// What the adapter reaches in the driver data without knowing the driver: not generic, so that
/// a driver's module does not carry a copy of it.
///
/// # Invariants
///
/// - `work` is initialised with the `run` function of the [`Private`] this is the head of.
/// - `vdev` is the device the driver data was probed for; it outlives `self`.
/// - `gate` is the gate of the binding the driver data was probed with.
/// - `started` is set after the virtio core's last status write of probe, and never cleared.
#[repr(C)]
#[pin_data]
struct DataHead<'bound> {
    /// First: found at the address of the driver data.
    #[pin]
    work: Opaque<bindings::work_struct>,
    vdev: NonNull<bindings::virtio_device>,
    gate: &'bound Gate,
    /// Whether [`Device::schedule_work`] queues the work.
    started: Atomic<bool>,
}

const _: () = assert!(core::mem::offset_of!(DataHead<'static>, work) == 0);

// SAFETY: `vdev` is only used to make a `&Device<Bound>`, which is `Sync`; the work item is
// usable from any thread and `T::Data` is `Send + Sync`.
unsafe impl<T: Driver> Send for Private<'_, T> {}

// SAFETY: As for `Send`.
unsafe impl<T: Driver> Sync for Private<'_, T> {}

impl<'bound, T: Driver + 'static> Private<'bound, T> {
    /// Initialises the work item, then the driver's data from `data`.
    pub(super) fn new(
        vdev: NonNull<bindings::virtio_device>,
        gate: &'bound Gate,
        data: impl PinInit<T::Data<'bound>, Error> + 'bound,
    ) -> impl PinInit<Self, Error> + 'bound {
        // `run` and `schedule_work` find the `Private` and its work item at its address.
        const { assert!(core::mem::offset_of!(Self, head) == 0) };
        try_pin_init!(Self {
            // SAFETY: `run` takes the work item for the head of a `Private<T>`, which this one
            // is the head of.
            head <- unsafe { DataHead::new(vdev, gate, Self::run) },
            data <- data,
        }? Error)
    }

    /// Publishes `this` as `vdev`'s driver data.
    ///
    /// Same as `set_drvdata()`, but with release ordering: [`Device::schedule_work`] may read the
    /// pointer from interrupt context on another CPU as soon as it is stored.
    pub(super) fn publish(dev: &device::Device<device::CoreInternal<'_>>, this: Pin<KBox<Self>>) {
        publish(dev, this.into_foreign().cast());
    }

    /// Takes the driver data back from `dev`: the reverse of [`Private::publish`].
    ///
    /// # Safety
    ///
    /// `dev`'s driver data was stored by [`Private::publish`] for this `T`, and no reference
    /// obtained through it is used after this.
    pub(super) unsafe fn unpublish(
        dev: &device::Device<device::CoreInternal<'_>>,
    ) -> Pin<KBox<Self>> {
        let ptr = unpublish(dev);
        // SAFETY: By the safety requirements, `ptr` comes from `into_foreign()` in `publish`, and
        // is given back once: the pointer is null now.
        unsafe { Pin::<KBox<Self>>::from_foreign(ptr.cast()) }
    }

    /// The driver's data.
    pub(super) fn data(self: Pin<&Self>) -> Pin<&T::Data<'bound>> {
        // SAFETY: `data` is structurally pinned.
        unsafe { self.map_unchecked(|p| &p.data) }
    }

    extern "C" fn run(work: *mut bindings::work_struct) {
        // SAFETY: Only `Private::<T>::new` installs this function, for the work item of its head
        // (`DataHead::new`'s safety requirements), which is at offset 0 of the `Private<T>`; the
        // item is disabled before the `Private` is dropped.
        let this = unsafe { Pin::new_unchecked(&*work.cast::<Self>()) };
        let head = &this.get_ref().head;
        if T::HAS_WORK {
            T::work(head.device(), this.data());
        }
        head.ran();
    }

    /// Lets [`Device::schedule_work`] queue the work from now on: from `scan`, after the virtio
    /// core's last status write of probe.
    pub(super) fn start_work(&self) {
        // INVARIANT: Called from `scan`, after probe.
        self.head.started.store(true, Release);
    }

    /// The binding's gate, which outlives the driver data: closed at the end of unbind.
    #[inline]
    pub(super) fn gate(&self) -> &'bound Gate {
        self.head.gate
    }

    /// Disables the work item and waits for a running instance: it will not run again.
    #[inline]
    pub(super) fn disable_work(&self) {
        self.head.disable_work();
    }
}

impl<'bound> DataHead<'bound> {
    /// A head whose work item runs `run`.
    ///
    /// # Safety
    ///
    /// `run` is the `run` function of the [`Private`] this head is initialised in.
    unsafe fn new(
        vdev: NonNull<bindings::virtio_device>,
        gate: &'bound Gate,
        run: unsafe extern "C" fn(*mut bindings::work_struct),
    ) -> impl PinInit<Self> + 'bound {
        pin_init!(Self {
            work <- Opaque::ffi_init(move |slot| {
                // SAFETY: `slot` is valid for writes; `run` expects a work item embedded at
                // offset 0 of its `Private<T>`, which this one is (safety requirements).
                unsafe {
                    bindings::init_work_with_key(
                        slot,
                        Some(run),
                        false,
                        crate::c_str!("virtio::Private::work").as_char_ptr(),
                        crate::static_lock_class!().as_ptr(),
                    )
                }
            }),
            vdev,
            gate,
            started: Atomic::new(false),
        })
    }

    /// After the driver's work: lets the wakeup source go unless the work is queued again.
    fn ran(&self) {
        let dev = self.device();
        // SAFETY: `work` is initialised by the type invariant.
        let pending = || unsafe { bindings::work_pending(self.work.get()) };
        if !pending() {
            dev.relax();
            // Scheduled between the check and the relax: hold the source again.
            if pending() {
                dev.stay_awake();
            }
        }
    }

    fn disable_work(&self) {
        // SAFETY: `work` is initialised by the type invariant.
        if unsafe { bindings::disable_work_sync(self.work.get()) } {
            // It was pending, and held the wakeup source.
            self.device().relax();
        }
    }

    fn device(&self) -> &Device<device::Bound> {
        // SAFETY: By the type invariant `vdev` is valid, and the driver is bound while `self`
        // exists.
        unsafe { &*self.vdev.as_ptr().cast::<Device<device::Bound>>() }
    }
}

/// `dev`'s driver data pointer, as readers that may race with its store see it.
fn slot<Ctx: device::DeviceContext>(dev: &device::Device<Ctx>) -> &Atomic<*mut c_void> {
    // The driver core's plain accesses (`drvdata_obtain()` in `post_unbind_rust`, and
    // `dev_set_drvdata(dev, NULL)`, in `device_unbind_cleanup()`) come after remove returned,
    // with the queues deleted and the binding's gate closed (which ended what the driver
    // leaked): nothing reads the pointer any more.
    // SAFETY: `dev` is valid, and its `driver_data` lives as long as the borrow. Apart from those
    // accesses, it is only accessed atomically: by `publish`, `unpublish` and `schedule_work`.
    unsafe { Atomic::from_ptr(&raw mut (*dev.as_raw()).driver_data) }
}

/// Stores `ptr` as `dev`'s driver data, with release ordering.
fn publish(dev: &device::Device<device::CoreInternal<'_>>, ptr: *mut c_void) {
    slot(dev).store(ptr, Release);
}

/// Clears `dev`'s driver data and returns what it was, once nobody uses it.
///
/// [`Device::schedule_work`] may still read the pointer from a queue callback until the driver's
/// queues are deleted, or from a leaked registration until the binding's gate is closed, at the
/// end of remove.
fn unpublish(dev: &device::Device<device::CoreInternal<'_>>) -> *mut c_void {
    take_published(slot(dev))
}

/// Calls `f` with the pointer published in `slot`, if there is one, within one RCU read-side
/// critical section: if whoever frees what it points at first clears `slot` with
/// [`take_published`], that stays allocated until `f` returns. `f` must not sleep.
pub(super) fn with_published<R>(
    slot: &Atomic<*mut c_void>,
    f: impl FnOnce(NonNull<c_void>) -> R,
) -> Option<R> {
    let _guard = rcu::read_lock();
    NonNull::new(slot.load(Acquire)).map(f)
}

/// Clears `slot` and returns what it held, once no [`with_published`] call uses it any more.
pub(super) fn take_published(slot: &Atomic<*mut c_void>) -> *mut c_void {
    let ptr = slot.xchg(core::ptr::null_mut(), Relaxed);
    // A `with_published` call that loaded `ptr` is inside a read-side critical section, which
    // ends before the grace period does.
    synchronize_rcu();
    ptr
}

#[pinned_drop]
impl<T: Driver> PinnedDrop for Private<'_, T> {
    fn drop(self: Pin<&mut Self>) {
        // Remove has disabled the work already; this covers a driver data that is dropped
        // without remove, and must come before the data the work borrows is dropped.
        self.head.disable_work();
    }
}

impl Device<device::Bound> {
    /// Queues the bound driver's [`Driver::work`] on the freezable system workqueue.
    ///
    /// Returns `false` if the work was already pending, or is not accepted: until the virtio
    /// core's last status write of probe (the adapter then runs the work once), and once
    /// unbinding has started. Callable from any context, including interrupt handlers.
    pub fn schedule_work(&self) -> bool {
        let published = slot(self.as_ref());
        // Within the critical section, `Private::unpublish` cannot free the driver data, nor
        // remove do its final `relax()`, before the work is queued and accounted for.
        with_published(published, |ptr| {
            // SAFETY: The driver data of a Rust virtio driver is a `Private`, whose head is at
            // offset 0, initialised before it was published (a release store, read with acquire)
            // and allocated until `with_published` returns.
            let head = unsafe { &*ptr.as_ptr().cast::<DataHead<'_>>() };
            if !head.started.load(Acquire) {
                return false;
            }
            // SAFETY: The head's work item is at offset 0 (see above); `system_freezable_wq`
            // lives forever.
            let queued = unsafe {
                bindings::queue_work_on(
                    bindings::wq_misc_consts_WORK_CPU_UNBOUND as c_int,
                    bindings::system_freezable_wq,
                    ptr.as_ptr().cast(),
                )
            };
            if queued {
                self.stay_awake();
            }
            queued
        })
        .unwrap_or(false)
    }

    /// Holds the device's wakeup source, if it has one (`pm_stay_awake()`).
    fn stay_awake(&self) {
        #[cfg(CONFIG_PM_SLEEP)]
        // SAFETY: `self` is a valid device; `pm_stay_awake()` may be called from any context.
        unsafe {
            bindings::pm_stay_awake(self.as_ref().as_raw())
        };
    }

    /// Lets the device's wakeup source go (`pm_relax()`).
    pub(super) fn relax(&self) {
        #[cfg(CONFIG_PM_SLEEP)]
        // SAFETY: As for `stay_awake`.
        unsafe {
            bindings::pm_relax(self.as_ref().as_raw())
        };
    }
}

impl Device<device::Core<'_>> {
    /// Makes the device able to wake the system, or not (`device_set_wakeup_capable()`).
    ///
    /// A wakeup-capable device whose wakeup user space enabled (`power/wakeup`) holds its
    /// wakeup source while the driver's work is pending or running; see [`Driver::work`].
    pub fn set_wakeup_capable(&self, capable: bool) {
        #[cfg(CONFIG_PM_SLEEP)]
        // SAFETY: `self` is a valid device, and we are in a bus callback of its driver.
        unsafe {
            bindings::device_set_wakeup_capable(self.as_ref().as_raw(), capable)
        };
        #[cfg(not(CONFIG_PM_SLEEP))]
        let _ = capable;
    }
}
