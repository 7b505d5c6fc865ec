// SPDX-License-Identifier: GPL-2.0

//! Abstractions for the virtio bus.
//!
//! C header: [`include/linux/virtio.h`](srctree/include/linux/virtio.h)
//!
//! A virtio driver implements [`Driver`] and registers with
//! [`module_virtio_driver!`](crate::module_virtio_driver). The bus calls, in this order:
//! [`Driver::validate`] (features negotiated, no driver data yet), [`Driver::probe`] (creates the
//! driver data, usually including the driver's [`Virtqueues`]), then any of
//! [`Driver::config_changed`], [`Driver::work`], [`Driver::freeze`], [`Driver::restore`] and
//! [`Driver::shutdown`] while the device is bound, and at last [`Driver::unbind`].
//!
//! # Teardown
//!
//! The abstraction, not the driver, tears the device down, in this order:
//!
//! 1. waiters of the queues are woken (a device removed by surprise has broken rings, and
//!    breaking a ring wakes nobody), and the driver's work is disabled (it finishes if running);
//! 2. [`Driver::unbind`] runs, with the device still working;
//! 3. the driver data is dropped, still within `remove()`, field by field: parts that may need
//!    the device to let go (a registration whose callback waits for the device) go first, while
//!    it works; its [`Virtqueues`] then reset the device, hand every buffer the device still
//!    held back to its owner (and so drop it), and delete the queues;
//! 4. the device is reset, as the virtio core requires of `remove()`, if the data held no
//!    queues;
//! 5. what the driver leaked ends (its fences, see [`crate::devres::UnbindFence`]), before the
//!    device's devres actions run.
//!
//! Nothing the driver owns can be reached by the device once `remove()` returns.

use crate::{
    bindings,
    device,
    devres::{
        Binding,
        Gate, //
    },
    driver,
    error::{
        from_result,
        to_result,
        VTABLE_DEFAULT_ERROR, //
    },
    prelude::*,
    str::CStr,
    types::Opaque,
    ThisModule, //
};
use core::{
    marker::PhantomData,
    mem::offset_of,
    ptr::{
        addr_of_mut,
        NonNull, //
    },
};

pub mod balloon;
mod buffer;
mod config;
mod features;
mod id;
#[cfg(CONFIG_RUST_VIRTIO_PM_KUNIT_TEST)]
mod pm_tests;
#[cfg(CONFIG_KUNIT)]
mod tests;
pub mod virtqueue;
mod work;

/// Little-endian integer types for configuration layouts and buffers.
pub use zerocopy::byteorder::little_endian as le;

pub use self::config::ConfigSpace;
pub use self::features::{
    Feature,
    FeatureSet, //
};
pub use self::id::{
    DeviceId,
    IdTable, //
};
pub use self::virtqueue::{
    Buffer,
    Lent,
    QueueId,
    QueueInfo,
    Virtqueues, //
};
// The adapter's driver data type, public only as `DriverLayout::DriverData`.
#[doc(hidden)]
pub use self::work::Private;

/// An adapter for the registration of virtio drivers.
pub struct Adapter<T: Driver>(T);

// SAFETY: `bindings::virtio_driver` is a `repr(C)` C type embedding a `struct device_driver` at
// `DEVICE_DRIVER_OFFSET`, and `Private<T>` is the type of the driver's device private data.
unsafe impl<T: Driver + 'static> driver::DriverLayout for Adapter<T> {
    type DriverType = bindings::virtio_driver;
    type DriverData<'bound> = Private<'bound, T>;
    const DEVICE_DRIVER_OFFSET: usize = offset_of!(Self::DriverType, driver);
}

// SAFETY: A call to `unregister` for a given instance of `DriverType` is guaranteed to be valid if
// a preceding call to `register` has been successful.
unsafe impl<T: Driver + 'static> driver::RegistrationOps for Adapter<T> {
    unsafe fn register(
        vdrv: &Opaque<Self::DriverType>,
        name: &'static CStr,
        module: &'static ThisModule,
    ) -> Result {
        let features = features::raw_table(T::FEATURES)?;

        // SAFETY: It's safe to set the fields of `struct virtio_driver` on initialization. A NULL
        // optional callback keeps the virtio core's default behaviour, which is why only the
        // callbacks the driver implements are installed.
        unsafe {
            let drv = vdrv.get();
            (*drv).driver.name = name.as_char_ptr();
            (*drv).id_table = T::ID_TABLE.as_ptr();
            (*drv).feature_table = features.as_ptr();
            (*drv).feature_table_size = features.len() as u32;
            (*drv).probe = Some(Self::probe_callback);
            (*drv).scan = Some(Self::scan_callback);
            (*drv).remove = Some(Self::remove_callback);
            if T::HAS_VALIDATE {
                (*drv).validate = Some(Self::validate_callback);
            }
            if T::HAS_CONFIG_CHANGED {
                (*drv).config_changed = Some(Self::config_changed_callback);
            }
            (*drv).shutdown = Some(Self::shutdown_callback);
            #[cfg(CONFIG_PM_SLEEP)]
            if T::HAS_FREEZE {
                (*drv).freeze = Some(Self::freeze_callback);
                (*drv).restore = Some(Self::restore_callback);
            } else {
                (*drv).freeze = Some(Self::refuse_freeze_callback);
            }
        }

        // SAFETY: `vdrv` is guaranteed to be a valid `DriverType`.
        to_result(unsafe { bindings::__register_virtio_driver(vdrv.get(), module.as_ptr()) })
    }

    unsafe fn unregister(vdrv: &Opaque<Self::DriverType>) {
        // SAFETY: `vdrv` is guaranteed to be a valid `DriverType`.
        unsafe { bindings::unregister_virtio_driver(vdrv.get()) }
    }
}

impl<T: Driver + 'static> Adapter<T> {
    extern "C" fn validate_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // INVARIANT: `vdev` is valid for the duration of `validate_callback()`.
        //
        // SAFETY: The virtio bus only ever calls the validate callback with a valid pointer to a
        // `struct virtio_device`, with the device lock held, during probe.
        let dev = unsafe { &*vdev.cast::<Device<device::Core<'_>>>() };
        let mut features = FeatureSet::new(dev);
        let dev: &Device = dev;

        from_result(|| T::validate(dev, &mut features).map(|()| 0))
    }

    extern "C" fn probe_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // INVARIANT: `vdev` is valid for the duration of `probe_callback()`.
        //
        // SAFETY: The virtio bus only ever calls the probe callback with a valid pointer to a
        // `struct virtio_device`.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };

        // `priv` belongs to the bound driver, and `Virtqueues` keeps itself there. A driver bound
        // before (a C one, say) may have left its own pointer behind.
        virtqueue::forget_priv(dev);

        let ret = from_result(|| {
            if !dev.has_ops() {
                dev_err!(
                    dev.as_ref(),
                    "the transport lacks a mandatory config operation\n"
                );
                return Err(ENODEV);
            }
            let vdev = NonNull::new(vdev).ok_or(EINVAL)?;
            let bound: &Device<device::Bound> = dev;
            // The binding's first devres action; closed at the end of remove, or below if probe
            // fails, after the driver data is gone and before the devres actions run.
            // SAFETY: Before the driver's probe, so the binding's first devres action; nothing
            // of the driver runs once the gate is closed (its fences have ended).
            let gate = unsafe { Gate::new(bound.as_ref()) }?;
            // The driver data lives until remove; what outlives it (the device, statics) stays
            // valid until the binding's devres actions run, after remove.
            // SAFETY: As just said. `gate` is this binding's, made before the driver registers
            // anything, and closed after the driver data is dropped (end of remove, or below).
            let binding = unsafe { Binding::new(bound, gate) };
            let data = KBox::pin_init(
                Private::<T>::new(vdev, gate, T::probe(dev, binding)),
                GFP_KERNEL,
            )
            .inspect_err(|_| {
                virtqueue::quiesce_leaked(dev);
                gate.close();
            })?;
            // The virtio core sets `DRIVER_OK` once we return, which it must not on a device a
            // waiter reset (a broken one): fail the probe instead. From now on waiters may no
            // longer reset.
            if virtqueue::callback_window(dev, false) {
                dev_err!(dev.as_ref(), "the device broke during probe\n");
                drop(data);
                virtqueue::quiesce_leaked(dev);
                gate.close();
                return Err(EIO);
            }

            Private::publish(dev.as_ref(), data);
            Ok(0)
        });
        // On failure too, before the virtio core sets the status.
        virtqueue::callback_window(dev, false);
        #[cfg(CONFIG_RUST_VIRTIO_PM_KUNIT_TEST)]
        pm_tests::probe_returns(vdev);
        ret
    }

    extern "C" fn scan_callback(vdev: *mut bindings::virtio_device) {
        // INVARIANT: `vdev` is valid for the duration of `scan_callback()`.
        //
        // SAFETY: The virtio bus only ever calls the scan callback with a valid pointer to a
        // `struct virtio_device`, with the device lock held.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };

        // SAFETY: The virtio core only calls `scan` after a successful call to `probe_callback`,
        // which published a `Pin<KBox<Private<'_, T>>>`, and before remove, which the device
        // lock keeps away.
        let private = unsafe { dev.as_ref().drvdata_borrow::<Private<'_, T>>() };
        // The core has set `DRIVER_OK`, its last status write in probe: the work may run from
        // now on, and runs once for what was scheduled during probe (see
        // `Device::schedule_work`).
        private.start_work();
        if T::HAS_WORK {
            dev.schedule_work();
        }
    }

    extern "C" fn remove_callback(vdev: *mut bindings::virtio_device) {
        // INVARIANT: `vdev` is valid for the duration of `remove_callback()`.
        //
        // SAFETY: The virtio bus only ever calls the remove callback with a valid pointer to a
        // `struct virtio_device`.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };

        // SAFETY: `remove_callback` is only ever called after a successful call to
        // `probe_callback`, hence it's guaranteed that `Private::publish()` has been called
        // and stored a `Pin<KBox<Private<'_, T>>>`.
        let private = unsafe { dev.as_ref().drvdata_borrow::<Private<'_, T>>() };

        let gate = private.gate();
        // A device removed by surprise has broken rings: its waiters (the work, say) return. A
        // device that no longer answers gets a grace period, then a reset.
        virtqueue::begin_unbind(dev);
        private.disable_work();
        T::unbind(dev, private.data());

        // The data goes while the device still works: parts of it may wait for the device
        // before they let go (a free page report in flight, say). Its `Virtqueues` reset the
        // device, reclaim the buffers and delete the queues when dropped.
        // SAFETY: `probe_callback` published a `Private<'_, T>`; `private` is not used after this.
        drop(unsafe { Private::<T>::unpublish(dev.as_ref()) });

        // `virtio_dev_remove()` checks that the device is reset as soon as we return.
        if !virtqueue::quiesce_leaked(dev) {
            dev.reset();
        }
        // What the driver leaked ends now, before the devres actions run (it may use them until
        // then), and nothing is registered for the binding any more.
        gate.close();
        // A `schedule_work()` that raced `disable_work()` may have taken the wakeup source after
        // it was let go; nothing can schedule work any more.
        dev.relax();
    }

    extern "C" fn config_changed_callback(vdev: *mut bindings::virtio_device) {
        // INVARIANT: `vdev` is valid and bound for the duration of `config_changed_callback()`.
        //
        // SAFETY: The virtio core only calls `config_changed` with a valid pointer to a
        // `struct virtio_device` whose driver is bound: between the end of a successful probe and
        // the start of remove.
        let dev = unsafe { &*vdev.cast::<Device<device::BoundInternal>>() };

        // SAFETY: The device is bound, so `probe_callback` has stored a
        // `Pin<KBox<Private<'_, T>>>`, which is only dropped after unbind.
        let data = unsafe { dev.as_ref().drvdata_borrow::<Private<'_, T>>() }.data();

        T::config_changed(dev, data);
    }

    extern "C" fn shutdown_callback(vdev: *mut bindings::virtio_device) {
        // INVARIANT: `vdev` is valid for the duration of `shutdown_callback()`.
        //
        // SAFETY: The virtio bus only calls shutdown with a valid pointer to a `struct
        // virtio_device` whose driver is bound, with the device lock held.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };

        // SAFETY: The device is bound, so `probe_callback` has stored a
        // `Pin<KBox<Private<'_, T>>>`.
        let private = unsafe { dev.as_ref().drvdata_borrow::<Private<'_, T>>() };

        // The work would only find a dead device; it must not wait for ever for it either.
        virtqueue::begin_unbind(dev);
        private.disable_work();
        if T::HAS_SHUTDOWN {
            T::shutdown(dev, private.data());
        }

        // What the virtio core does for a driver without shutdown (break the rings, wait for
        // callbacks, reset); whoever still waited on a ring returns, with `EIO`.
        virtqueue::shutdown(dev);
    }

    #[cfg(CONFIG_PM_SLEEP)]
    extern "C" fn freeze_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // INVARIANT: `vdev` is valid for the duration of `freeze_callback()`.
        //
        // The driver stays bound: user space, which starts unbinds, is frozen, and the transport's
        // lock keeps the transport from being removed. (The KUnit caller holds the device's own.)
        // SAFETY: A transport's PM callback only calls freeze with a valid pointer to a `struct
        // virtio_device` whose driver is bound, during a sleep transition, as said above.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };

        // SAFETY: The device is bound, so `probe_callback` has stored a
        // `Pin<KBox<Private<'_, T>>>`.
        let data = unsafe { dev.as_ref().drvdata_borrow::<Private<'_, T>>() }.data();

        // While we run (the PM core holds the transport's device lock, user space is frozen,
        // probing is blocked), waiters may reset a broken device: `freeze` may wait on one (the
        // balloon deflates).
        virtqueue::callback_window(dev, true);
        let ret = from_result(|| T::freeze(dev, data).map(|()| 0));
        virtqueue::callback_window(dev, false);
        // The virtio core suspends the device as the driver left it: one whose queues still run
        // would use guest memory across the suspend, and find no rings after resume.
        if ret == 0 && virtqueue::live(dev) {
            dev_err!(
                dev.as_ref(),
                "freeze left the queues live: suspend refused\n"
            );
            return EBUSY.to_errno();
        }
        ret
    }

    /// Without `freeze` the virtio core would suspend and resume the device behind the driver's
    /// back, and the driver's queues would not work after resume: refuse to suspend instead.
    #[cfg(CONFIG_PM_SLEEP)]
    extern "C" fn refuse_freeze_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // SAFETY: A transport only calls freeze with a valid pointer to a `struct
        // virtio_device` whose driver is bound.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };
        dev_warn!(dev.as_ref(), "driver does not support suspend\n");
        EOPNOTSUPP.to_errno()
    }

    #[cfg(CONFIG_PM_SLEEP)]
    extern "C" fn restore_callback(vdev: *mut bindings::virtio_device) -> c_int {
        // INVARIANT: `vdev` is valid for the duration of `restore_callback()`.
        //
        // SAFETY: As for `freeze_callback`.
        let dev = unsafe { &*vdev.cast::<Device<device::CoreInternal<'_>>>() };

        // SAFETY: The device is bound, so `probe_callback` has stored a
        // `Pin<KBox<Private<'_, T>>>`.
        let data = unsafe { dev.as_ref().drvdata_borrow::<Private<'_, T>>() }.data();

        // As for freeze. The virtio core sets `DRIVER_OK` once we return, which it must not on
        // a device a waiter reset meanwhile: fail instead.
        virtqueue::callback_window(dev, true);
        let ret = from_result(|| T::restore(dev, data).map(|()| 0));
        if virtqueue::callback_window(dev, false) && ret == 0 {
            dev_err!(dev.as_ref(), "the device broke during restore\n");
            return EIO.to_errno();
        }
        ret
    }
}

/// Declares a kernel module that exposes a single virtio driver.
///
/// # Examples
///
/// ```ignore
/// kernel::module_virtio_driver! {
///     type: MyDriver,
///     name: "Module name",
///     authors: ["Author name"],
///     description: "Description",
///     license: "GPL v2",
/// }
/// ```
#[macro_export]
macro_rules! module_virtio_driver {
    ($($f:tt)*) => {
        $crate::module_driver!(<T>, $crate::virtio::Adapter<T>, { $($f)* });
    };
}

/// The virtio driver trait.
///
/// Optional callbacks are only installed when implemented, because the virtio core behaves
/// differently when one is absent. Shutdown is the exception: the abstraction always disables the
/// driver's work, then calls [`Driver::shutdown`] if implemented, then quiesces the device as the
/// core does for drivers without one. Without `freeze` and `restore` the core would suspend and
/// resume the device behind the driver's back, leaving its queues dead: the abstraction refuses
/// to suspend such a device instead (`EOPNOTSUPP`).
///
/// # Examples
///
/// ```
/// use kernel::{c_str, device::{Bound, Core}, devres::Binding, prelude::*, virtio};
///
/// struct MyDriver;
///
/// kernel::virtio_device_table!(
///     VIRTIO_TABLE,
///     [virtio::DeviceId::new(virtio::DeviceId::ENTROPY)]
/// );
///
/// #[vtable]
/// impl virtio::Driver for MyDriver {
///     type Data<'bound> = ();
///
///     const ID_TABLE: virtio::IdTable = &VIRTIO_TABLE;
///     const FEATURES: &'static [virtio::Feature] = &[];
///
///     fn probe<'bound>(
///         dev: &'bound virtio::Device<Core<'_>>,
///         _binding: Binding<'bound, virtio::Device<Bound>>,
///     ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
///         dev.ready();
///         Ok(())
///     }
/// }
/// ```
#[vtable]
pub trait Driver {
    /// The driver's per-device data, created in probe and dropped after unbind.
    ///
    /// It is shared with callbacks that run in interrupt context, hence `Sync`.
    type Data<'bound>: Send + Sync + 'bound;

    /// The table of device ids supported by the driver.
    const ID_TABLE: IdTable;

    /// The device features the driver understands; the device is offered no other.
    const FEATURES: &'static [Feature];

    /// Checks or trims the negotiated features before they are final.
    ///
    /// Runs before probe, without driver data, before the features are final: `dev` is a plain
    /// device, on which neither [`Device::ready`] nor [`Device::reset`] can be called (the virtio
    /// core writes `FEATURES_OK` after this returns), and `features` answers feature questions.
    fn validate(dev: &Device, features: &mut FeatureSet<'_>) -> Result {
        let _ = (dev, features);
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Binds the driver to `dev`.
    ///
    /// `binding` is how long the driver data may borrow: until the device is unbound. Queues
    /// ([`Virtqueues::new`]) and registrations whose handlers borrow take it, so that even leaked
    /// they end at unbind.
    ///
    /// Queues created here may already deliver callbacks before probe returns. If probe does not
    /// call [`Device::ready`], the virtio core does so after it returns.
    fn probe<'bound>(
        dev: &'bound Device<device::Core<'_>>,
        binding: Binding<'bound, Device<device::Bound>>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound;

    /// Unbinds the driver: the last moment the device still works.
    ///
    /// When this returns the driver data is dropped (its [`Virtqueues`] reset the device) and the
    /// device is reset, all before `remove()` returns. Then what the driver leaked ends, and the
    /// binding accepts no new fenced registration: one made afterwards (by a leaked handler)
    /// fails with `ENODEV`.
    fn unbind<'bound>(dev: &'bound Device<device::Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        let _ = (dev, this);
    }

    /// The device changed its configuration space.
    ///
    /// Runs in atomic context (under the core's config spin lock): it must not sleep, so it must
    /// not read the configuration space, whose accessors may sleep (a debug kernel reports it).
    /// Drivers typically queue work.
    fn config_changed<'bound>(dev: &'bound Device<device::Bound>, this: Pin<&Self::Data<'bound>>) {
        let _ = (dev, this);
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// The driver's deferred work, in process context; queued with [`Device::schedule_work`].
    ///
    /// Runs once after probe (after the virtio core's last status write of probe, which sets
    /// `DRIVER_OK` if the driver's probe did not), then each time it is scheduled, never
    /// concurrently with itself nor with [`Driver::unbind`], and not after [`Driver::shutdown`].
    /// It runs on a freezable workqueue, so not while the system is frozen for sleep: work
    /// scheduled during [`Driver::restore`] runs after the core's status write that follows it.
    /// While it is pending or running, a wakeup-capable device holds its wakeup source
    /// ([`Device::set_wakeup_capable`]). Only this work waits for the end of probe: what else a
    /// probe registers (notifiers, shrinkers, page reporting) may run before.
    fn work<'bound>(dev: &'bound Device<device::Bound>, this: Pin<&Self::Data<'bound>>) {
        let _ = (dev, this);
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Quiesces the driver before the system shuts down.
    ///
    /// The driver's work is already disabled; when this returns the abstraction breaks the rings
    /// and resets the device, so that nothing may wait on the device after this.
    fn shutdown<'bound>(dev: &'bound Device<device::Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        let _ = (dev, this);
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Prepares for system sleep: typically [`Virtqueues::freeze`], which resets the device and
    /// deletes the queues.
    ///
    /// For system sleep, freezable workqueues are frozen first, so the driver's work does not run
    /// meanwhile; a kexec jump (`CONFIG_KEXEC_JUMP`) freezes only user space, and the work may
    /// run concurrently (its waits end with `EIO` once the queues are frozen). Implementing
    /// `freeze` requires implementing [`Driver::restore`] too. A `freeze` that returns `Ok` with
    /// queues neither frozen nor reset fails with `EBUSY`: the device would be suspended running.
    /// A `freeze` that fails must leave the device working: the system does not suspend, and
    /// [`Driver::restore`] is not called, so queues it froze before failing stay frozen (their
    /// use fails with `ENODEV`) unless it restores them itself.
    fn freeze<'bound>(
        dev: &'bound Device<device::Core<'_>>,
        this: Pin<&Self::Data<'bound>>,
    ) -> Result {
        let _ = (dev, this);
        build_error!(VTABLE_DEFAULT_ERROR)
    }

    /// Brings the device back after [`Driver::freeze`]: typically [`Virtqueues::restore`], then
    /// whatever probe did with the fresh queues. If the driver does not mark the device ready,
    /// the virtio core does after this returns.
    fn restore<'bound>(
        dev: &'bound Device<device::Core<'_>>,
        this: Pin<&Self::Data<'bound>>,
    ) -> Result {
        let _ = (dev, this);
        build_error!(VTABLE_DEFAULT_ERROR)
    }
}

/// The virtio device representation.
///
/// This structure represents the Rust abstraction for a C `struct virtio_device`. The
/// implementation abstracts the usage of an already existing C `struct virtio_device` within Rust
/// code that we get passed from the C side.
///
/// A `Device<Core>` is what the driver's probe, unbind, shutdown, freeze and restore are given.
/// The virtio core runs them one at a time, and leaves the device's status to the driver while
/// one runs. Probe, remove and shutdown hold this device's lock. Freeze and restore do not:
/// they run during a system sleep transition, with the transport's device lock held by the PM
/// core, user space frozen and probing blocked, so no probe or unbind of this device runs
/// meanwhile (a transport's removal takes the transport's lock first). Methods of
/// `Device<Core>` rely on that, not on this device's lock. (A kernel built without
/// `CONFIG_SUSPEND_FREEZER` leaves user space running during suspend, and then a sysfs unbind
/// could race freeze; C's `virtio_device_freeze()` assumes the same as this abstraction.)
///
/// # Invariants
///
/// A [`Device`] instance represents a valid `struct virtio_device` created by a virtio transport.
#[repr(transparent)]
pub struct Device<Ctx: device::DeviceContext = device::Normal>(
    Opaque<bindings::virtio_device>,
    PhantomData<Ctx>,
);

impl<Ctx: device::DeviceContext> Device<Ctx> {
    /// Whether the device's transport has the operations that `virtio_config_ops` makes
    /// mandatory and that the abstractions call through their pointers (`get`, `set`,
    /// `get_status`, `del_vqs`), as C drivers do, unconditionally. A Rust driver is not bound to
    /// a transport without them.
    fn has_ops(&self) -> bool {
        // SAFETY: `self` is a valid `struct virtio_device` (type invariant), whose `config`
        // points at its transport's operations for as long as it exists.
        let ops = unsafe { &*(*self.as_raw()).config };
        ops.get.is_some() && ops.set.is_some() && ops.get_status.is_some() && ops.del_vqs.is_some()
    }

    #[inline]
    fn as_raw(&self) -> *mut bindings::virtio_device {
        self.0.get()
    }

    /// Returns the device type (`VIRTIO_ID_*`), e.g. [`DeviceId::BALLOON`].
    pub fn device_type(&self) -> u32 {
        // SAFETY: By the type invariant `self.as_raw()` is a valid `struct virtio_device`, whose
        // id is set by the transport before the device is registered.
        unsafe { (*self.as_raw()).id.device }
    }

    /// Returns the vendor id the transport reported.
    pub fn vendor_id(&self) -> u32 {
        // SAFETY: As for `device_type`.
        unsafe { (*self.as_raw()).id.vendor }
    }
}

impl Device<device::Bound> {
    /// Returns whether `feature` was negotiated.
    ///
    /// Unlike the C `virtio_has_feature()`, which `BUG()`s when asked about a device feature its
    /// driver did not offer, this reports such a question as a driver bug in the log and answers
    /// `false`: the device cannot have negotiated it.
    ///
    /// Only while bound: the question goes to the driver's feature table, which a device no
    /// longer has once it is unbound.
    ///
    /// ```
    /// use kernel::{device::Bound, virtio};
    ///
    /// fn stats(dev: &virtio::Device<Bound>) -> bool {
    ///     dev.has_feature(virtio::Feature::new::<1>())
    /// }
    /// ```
    ///
    /// A device of no particular context, such as an `ARef<virtio::Device>` kept beyond the
    /// binding in a `'static` work item, cannot ask (no such method; `tests/test_compile_fail.py`
    /// checks that this does not compile):
    ///
    /// ```ignore
    /// // compile_fail: E0599
    /// use kernel::virtio;
    ///
    /// fn later(dev: &virtio::Device) -> bool {
    ///     dev.has_feature(virtio::Feature::new::<1>())
    /// }
    /// ```
    pub fn has_feature(&self, feature: Feature) -> bool {
        features::negotiated(self, feature)
    }
}

impl<'a> Device<device::Core<'a>> {
    /// Marks the driver ready (`DRIVER_OK`): from now on the device may use the queues.
    ///
    /// A driver that needs the device working before probe returns calls this; otherwise the
    /// virtio core does after probe. Calling it on a device already marked ready does nothing,
    /// nor on one reset since its queues were created.
    ///
    /// Only from a callback given a `Device<Core>` (see [`Device`]): the status is read, modified
    /// and written, the transport may sleep doing so (vDPA takes a mutex), and after shutdown or
    /// freeze the device must stay reset. Work, notifiers and queue callbacks have a
    /// [`Device<Bound>`], which cannot (`tests/test_compile_fail.py` checks that this does not
    /// compile):
    ///
    /// ```ignore
    /// // compile_fail: E0599
    /// use kernel::{device::Bound, virtio};
    ///
    /// fn from_work(dev: &virtio::Device<Bound>) {
    ///     dev.ready();
    /// }
    /// ```
    ///
    /// From probe or restore:
    ///
    /// ```
    /// use kernel::{device::Core, virtio};
    ///
    /// fn restore(dev: &virtio::Device<Core<'_>>) {
    ///     dev.ready();
    /// }
    /// ```
    pub fn ready(&self) {
        virtqueue::ready(self);
    }

    /// Resets the device: it stops using the queues and its interrupt handlers have finished.
    ///
    /// Buffers the device held stay in their queues until the [`Virtqueues`] are dropped;
    /// waiters on the queues return `EIO`.
    pub fn reset(&self) {
        virtqueue::reset(self);
    }
}

// SAFETY: `virtio::Device` is a transparent wrapper of `struct virtio_device`.
// The offset is guaranteed to point to a valid device field inside `virtio::Device`.
unsafe impl<Ctx: device::DeviceContext> device::AsBusDevice<Ctx> for Device<Ctx> {
    const OFFSET: usize = offset_of!(bindings::virtio_device, dev);
}

// SAFETY: `Device` is a transparent wrapper of a type that doesn't depend on `Device`'s generic
// argument.
kernel::impl_device_context_deref!(unsafe { Device });
kernel::impl_device_context_into_aref!(Device);

// SAFETY: Instances of `Device` are always reference-counted.
unsafe impl crate::sync::aref::AlwaysRefCounted for Device {
    #[inline]
    fn inc_ref(&self) {
        // SAFETY: The existence of a shared reference guarantees that the refcount is non-zero.
        unsafe { bindings::get_device(addr_of_mut!((*self.as_raw()).dev)) };
    }

    #[inline]
    unsafe fn dec_ref(obj: NonNull<Self>) {
        // SAFETY: The safety requirements guarantee that the refcount is non-zero.
        unsafe {
            bindings::put_device(addr_of_mut!(
                (*obj.cast::<bindings::virtio_device>().as_ptr()).dev
            ))
        }
    }
}

impl<Ctx: device::DeviceContext> AsRef<device::Device<Ctx>> for Device<Ctx> {
    fn as_ref(&self) -> &device::Device<Ctx> {
        // SAFETY: By the type invariant of `Self`, `self.as_raw()` is a pointer to a valid
        // `struct virtio_device`.
        let dev = unsafe { addr_of_mut!((*self.as_raw()).dev) };

        // SAFETY: `dev` points to a valid `struct device`.
        unsafe { device::Device::from_raw(dev) }
    }
}

// SAFETY: A `Device` is always reference-counted and can be released from any thread.
unsafe impl Send for Device {}

// SAFETY: `Device` can be shared among threads because all methods of `Device`
// (i.e. `Device<Normal>`) are thread safe.
unsafe impl Sync for Device {}

// SAFETY: Same as `Device<Normal>`: the underlying `struct virtio_device` is the same; `Bound` is a
// zero-sized type-state marker that does not affect thread safety.
unsafe impl Sync for Device<device::Bound> {}
