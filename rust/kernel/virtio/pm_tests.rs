// SPDX-License-Identifier: GPL-2.0

//! KUnit test of system sleep through the virtio adapter, on a real device.
//!
//! A test driver binds a virtio balloon no driver has bound (on the test machine its drivers
//! are modules, so nothing else has when KUnit runs at boot), and is frozen and restored
//! the way `virtio_pci`'s PM callbacks do it: `virtio_device_freeze()` and
//! `virtio_device_restore()` under the transport's device lock. Another one checks that a
//! driver's first work runs only once the virtio core has finished probing. Enabled by
//! `CONFIG_RUST_VIRTIO_PM_KUNIT_TEST`, which needs such a device.

use crate::{
    bindings,
    prelude::*,
    sync::atomic::{
        Acquire,
        Atomic,
        Relaxed, //
    },
    time::{
        delay::fsleep,
        Delta, //
    },
};

/// Set by [`kunit::the_first_work_runs_once_the_device_is_ready`]: the probe of its driver then
/// waits, as it returns to the virtio core, for up to 300 ms for the driver's first work to run.
/// A work queued by probe would run there, before the core sets `DRIVER_OK`.
static HOLD_PROBE: Atomic<bool> = Atomic::new(false);

/// How many probes waited so: the test checks that its driver's did, synchronously.
static HELD: Atomic<u32> = Atomic::new(0);

/// The name of the test driver whose probe waits.
const STARTER_NAME: &CStr = c"rust_kunit_virtio_start";

/// The device status the first work of the test driver saw; `u32::MAX` until it ran.
static FIRST_WORK_STATUS: Atomic<u32> = Atomic::new(u32::MAX);

/// Called by the adapter's probe of `vdev` as it returns to the virtio core.
pub(super) fn probe_returns(vdev: *mut bindings::virtio_device) {
    // SAFETY: The adapter's probe passes its device, valid, whose driver the driver core set
    // before calling probe; a driver has a name.
    let starter = unsafe {
        let drv = (*vdev).dev.driver;
        !drv.is_null() && CStr::from_char_ptr((*drv).name) == STARTER_NAME
    };
    if !starter || !HOLD_PROBE.load(Relaxed) {
        return;
    }
    HELD.add(1, Relaxed);
    for _ in 0..30 {
        if FIRST_WORK_STATUS.load(Acquire) != u32::MAX {
            return;
        }
        fsleep(Delta::from_millis(10));
    }
}

#[macros::kunit_tests(rust_kernel_virtio_pm)]
mod kunit {
    use super::{
        fsleep,
        Delta,
        FIRST_WORK_STATUS,
        HELD,
        HOLD_PROBE,
        STARTER_NAME, //
    };
    use crate::{
        bindings,
        device::{
            Bound,
            Core, //
        },
        device_id::IdArray,
        devres::Binding,
        driver,
        module,
        prelude::*,
        sync::atomic::{
            Acquire,
            Atomic,
            Relaxed,
            Release, //
        },
        virtio::{
            Adapter,
            Device,
            DeviceId,
            Driver,
            Feature,
            IdTable,
            QueueId,
            QueueInfo,
            Virtqueues, //
        },
        LocalModule, //
    };
    use core::ptr;

    const INFLATE: QueueId<KBox<[u32; 1]>> = QueueId::new(0);
    const DEFLATE: QueueId<KBox<[u32; 1]>> = QueueId::new(1);
    const SPARE: [u32; 1] = [0x5a5a_5a5a];
    const DRIVER_NAME: &CStr = c"rust_kunit_virtio_pm";

    /// Whether the driver's `freeze` forgets to freeze its queues.
    static FORGET: Atomic<bool> = Atomic::new(false);
    /// The device the driver bound, with a reference the test puts; null until probe.
    static BOUND: Atomic<*mut bindings::virtio_device> = Atomic::new(ptr::null_mut());
    /// How many times `restore` succeeded.
    static RESTORED: Atomic<u32> = Atomic::new(0);
    /// What probe found of the queue group: one bit per check that held ([`group_checks`]).
    static GROUP: Atomic<u32> = Atomic::new(0);
    /// Whether `restore` found the spare probe left with the inflate queue.
    static SPARE_KEPT: Atomic<bool> = Atomic::new(false);

    /// Checks the group of the inflate and deflate queues, which share the inflate queue's ring
    /// lock; returns a bit per check that held.
    fn group_checks(vqs: &Virtqueues<'_, ()>) -> Result<u32> {
        let mut inflate = vqs.lock(INFLATE)?;
        let checks = [
            inflate
                .replace_spare(KBox::new(SPARE, GFP_KERNEL)?)
                .is_none(),
            // Held: neither queue of the group can be locked.
            vqs.try_lock(DEFLATE).err() == Some(EBUSY),
            vqs.try_lock(INFLATE).err() == Some(EBUSY),
            // Reached through the guard instead, but only as what it carries.
            inflate
                .sibling(DEFLATE)
                .is_ok_and(|d| d.num_free() == d.size()),
            inflate.sibling(QueueId::<KBox<u64>>::new(1)).err() == Some(EINVAL),
            inflate.sibling(QueueId::<KBox<[u32; 1]>>::new(7)).err() == Some(EINVAL),
        ];
        drop(inflate);
        // Free again once the guard is gone.
        let free = vqs.try_lock(DEFLATE).is_ok();
        let mut bits = u32::from(free) << checks.len();
        for (i, &held) in checks.iter().enumerate() {
            bits |= u32::from(held) << i;
        }
        Ok(bits)
    }

    // Not exported as a module device table: no alias should name this driver.
    static BALLOON_TABLE: IdArray<DeviceId, (), 1> =
        IdArray::new_without_index([DeviceId::new(DeviceId::BALLOON)]);

    /// A driver with one queue, whose `freeze` does its job unless told to forget it.
    struct Suspender;

    #[vtable]
    impl Driver for Suspender {
        type Data<'bound> = Virtqueues<'bound, ()>;

        const ID_TABLE: IdTable = &BALLOON_TABLE;
        const FEATURES: &'static [Feature] = &[];

        fn probe<'bound>(
            dev: &'bound Device<Core<'_>>,
            binding: Binding<'bound, Device<Bound>>,
        ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
            let vdev = dev.as_raw();
            let queues = [
                QueueInfo::new(INFLATE, c"inflate"),
                QueueInfo::new(DEFLATE, c"deflate").locked_with(INFLATE),
            ];
            Virtqueues::new(dev, binding, &queues, ()).pin_chain(move |vqs| {
                GROUP.store(group_checks(&vqs)?, Relaxed);
                // One device only: another free balloon stays unbound.
                BOUND
                    .cmpxchg(ptr::null_mut(), vdev, Release)
                    .map_err(|_| EBUSY)?;
                // SAFETY: `vdev` is a valid device; the test puts the reference.
                unsafe { bindings::get_device(&raw mut (*vdev).dev) };
                Ok(())
            })
        }

        fn freeze<'bound>(dev: &'bound Device<Core<'_>>, this: Pin<&Self::Data<'bound>>) -> Result {
            if FORGET.load(Relaxed) {
                return Ok(());
            }
            this.freeze(dev)
        }

        fn restore<'bound>(
            dev: &'bound Device<Core<'_>>,
            this: Pin<&Self::Data<'bound>>,
        ) -> Result {
            this.restore(dev)?;
            let mut inflate = this.lock(INFLATE)?;
            let spare = inflate.take_spare();
            let kept = spare.as_deref() == Some(&SPARE) && inflate.sibling(DEFLATE).is_ok();
            SPARE_KEPT.store(kept, Relaxed);
            RESTORED.add(1, Relaxed);
            Ok(())
        }
    }

    /// Runs `f` on `vdev` with its transport's device lock held, as the PM core calls a
    /// transport's freeze and restore, and with `vdev`'s own lock held too, which the PM core
    /// does not take: it blocks probing and has user space frozen instead, and this test may run
    /// again from debugfs while sysfs can unbind the driver. Returns `-ENODEV` without calling
    /// `f` unless, with both locks held, the device is bound to [`Suspender`].
    ///
    /// # Safety
    ///
    /// `vdev` is registered and has a parent, and the caller holds a reference to it. `f` is
    /// `virtio_device_freeze`, or `virtio_device_restore` right after a successful freeze.
    unsafe fn with_transport_locked(
        vdev: *mut bindings::virtio_device,
        f: unsafe extern "C" fn(*mut bindings::virtio_device) -> c_int,
    ) -> c_int {
        // SAFETY: By the safety requirements `vdev` is valid, and so is its parent, which a
        // registered device keeps a reference to.
        let (parent, own) = unsafe {
            (
                &raw mut (*(*vdev).dev.parent).mutex,
                &raw mut (*vdev).dev.mutex,
            )
        };
        // SAFETY: Both are initialised device mutexes; parent before child, as the driver core
        // nests them.
        unsafe {
            bindings::mutex_lock(parent);
            bindings::mutex_lock(own);
        }
        // The name identifies the driver: `driver_register()` refuses a second driver of the same
        // name on a bus, and `vdev` is on the virtio bus.
        // SAFETY: `vdev` is valid (safety requirements), and its driver only changes under its
        // lock, which we hold; a bound driver has a name.
        let ours = unsafe {
            let drv = (*vdev).dev.driver;
            !drv.is_null() && CStr::from_char_ptr((*drv).name) == DRIVER_NAME
        };
        let ret = if ours {
            // SAFETY: `vdev` is bound to `Suspender` and stays so under its lock, and the
            // transport's lock is held, as its PM callbacks hold it; `f` is called in the order
            // the safety requirements give.
            unsafe { f(vdev) }
        } else {
            ENODEV.to_errno()
        };
        // SAFETY: Taken above.
        unsafe {
            bindings::mutex_unlock(own);
            bindings::mutex_unlock(parent);
        }
        ret
    }

    /// Registers the test driver `T` as `name`; it binds the free balloon, if any, meanwhile.
    fn register<T: Driver + 'static>(
        name: &'static CStr,
    ) -> Result<Pin<KBox<driver::Registration<Adapter<T>>>>> {
        KBox::pin_init(
            driver::Registration::<Adapter<T>>::new(name, module::this_module::<LocalModule>()),
            GFP_KERNEL,
        )
    }

    /// A driver whose `freeze` leaves its queues running would let the device use guest memory
    /// across the suspend: the adapter refuses it with `EBUSY`. A `freeze` that freezes them
    /// suspends, and `restore` brings them back, as a group (the deflate queue shares the inflate
    /// queue's ring lock) and with the spare buffer the inflate queue kept.
    #[test]
    fn a_freeze_that_leaves_the_queues_live_is_refused() -> Result {
        FORGET.store(false, Relaxed);
        BOUND.store(ptr::null_mut(), Relaxed);
        RESTORED.store(0, Relaxed);
        GROUP.store(0, Relaxed);
        SPARE_KEPT.store(false, Relaxed);
        let reg = register::<Suspender>(DRIVER_NAME)?;
        let vdev = BOUND.load(Acquire);
        // A failed assertion ends the test thread without running destructors: the results are
        // collected first, the driver unregistered, and only then checked.
        let (mut frozen, mut restored, mut refused) = (None, None, None);
        if !vdev.is_null() {
            // SAFETY: `vdev` is bound to `Suspender`, with a reference held since its probe,
            // and has a parent (its transport); restore follows only a successful freeze.
            unsafe {
                frozen = Some(with_transport_locked(vdev, bindings::virtio_device_freeze));
                if frozen == Some(0) {
                    restored = Some(with_transport_locked(vdev, bindings::virtio_device_restore));
                }
            }
            // A device left frozen by a failed restore is not tried again.
            if restored == Some(0) {
                FORGET.store(true, Relaxed);
                // SAFETY: As above.
                refused =
                    Some(unsafe { with_transport_locked(vdev, bindings::virtio_device_freeze) });
            }
        }
        // A refused freeze leaves the device working: it unbinds as usual.
        drop(reg);
        if !vdev.is_null() {
            // SAFETY: The reference taken in probe.
            unsafe { bindings::put_device(&raw mut (*vdev).dev) };
        }

        // The guest has a free virtio balloon, and the driver bound it.
        assert!(!vdev.is_null());
        assert_eq!(frozen, Some(0));
        assert_eq!(restored, Some(0));
        assert_eq!(RESTORED.load(Relaxed), 1);
        // Fails without the adapter's check of the queues after `freeze`.
        assert_eq!(refused, Some(EBUSY.to_errno()));
        // Every check of the queue group held, and the spare survived freeze and restore.
        assert_eq!(GROUP.load(Relaxed), 0x7f);
        assert!(SPARE_KEPT.load(Relaxed));
        Ok(())
    }

    /// A driver with nothing but work, whose first work records the device's status.
    struct Starter;

    #[vtable]
    impl Driver for Starter {
        type Data<'bound> = ();

        const ID_TABLE: IdTable = &BALLOON_TABLE;
        const FEATURES: &'static [Feature] = &[];

        fn probe<'bound>(
            _dev: &'bound Device<Core<'_>>,
            _binding: Binding<'bound, Device<Bound>>,
        ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
            // Leaves `DRIVER_OK` to the virtio core.
            Ok(())
        }

        fn work<'bound>(dev: &'bound Device<Bound>, _this: Pin<&()>) {
            let vdev = dev.as_raw();
            // SAFETY: `vdev` is a bound device, whose transport has a `get_status` (checked at
            // probe); reading the status has no other precondition.
            let status = unsafe { (*(*vdev).config).get_status.map(|get| get(vdev)) };
            let _ = FIRST_WORK_STATUS.cmpxchg(u32::MAX, status.map_or(0, u32::from), Release);
        }
    }

    /// The first work runs once the virtio core has set `DRIVER_OK`, which it does after a
    /// probe that did not: probe holds the core back as it returns, long enough for a work it
    /// had queued to run. Fails if the adapter queues the first work from probe, not `scan`.
    #[test]
    fn the_first_work_runs_once_the_device_is_ready() -> Result {
        FIRST_WORK_STATUS.store(u32::MAX, Relaxed);
        HELD.store(0, Relaxed);
        HOLD_PROBE.store(true, Relaxed);
        let reg = register::<Starter>(STARTER_NAME);
        HOLD_PROBE.store(false, Relaxed);
        let reg = reg?;
        for _ in 0..100 {
            if FIRST_WORK_STATUS.load(Acquire) != u32::MAX {
                break;
            }
            fsleep(Delta::from_millis(10));
        }
        let status = FIRST_WORK_STATUS.load(Acquire);
        drop(reg);
        // The driver bound the free balloon, probing synchronously (so its probe waited), and its
        // first work ran, on a ready device.
        assert_eq!(HELD.load(Relaxed), 1);
        assert!(status != u32::MAX);
        assert!(status & bindings::VIRTIO_CONFIG_S_DRIVER_OK != 0);
        Ok(())
    }
}
