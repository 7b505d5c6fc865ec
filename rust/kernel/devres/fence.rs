// SPDX-License-Identifier: GPL-2.0

//! A backstop at unbind for registrations that lend borrowed data to C.
//!
//! A registration whose callbacks reach data a driver borrows from its device binding (a
//! notifier, a shrinker, a work item) ends in its drop. Safe code may leak it instead
//! (`mem::forget`, a reference cycle); the C side would then call into data whose borrow has
//! ended. The memory of a leaked value is never freed, so the registration itself stays valid:
//! what must not outlive the binding is its use. An [`UnbindFence`] arms a devres action that
//! ends the registration when the device is unbound, unless the registration was dropped, and
//! disarmed it, first.
//!
//! That is in time only for borrows that last until the device is unbound. A [`Binding<'a>`]
//! says `'a` does: a bus abstraction hands one to its driver's probe, and a registration that
//! takes one accepts only handlers that outlive `'a`.

use core::marker::PhantomData;

use crate::{
    bindings,
    device::{
        Bound,
        Device, //
    },
    error::to_result,
    prelude::*,
    sync::aref::ARef, //
};

/// Ends a registration at unbind unless disarmed first.
///
/// # Invariants
///
/// `action(data)` is registered as a devres action of `dev` until [`UnbindFence::disarm`] removes
/// it, or the device is unbound and runs it.
pub struct UnbindFence {
    dev: ARef<Device>,
    action: unsafe extern "C" fn(*mut c_void),
    data: *mut c_void,
}

// SAFETY: The fence only passes `data` back to the devres core; devres actions may be added and
// removed from any thread.
unsafe impl Send for UnbindFence {}

// SAFETY: `&UnbindFence` gives no access to anything.
unsafe impl Sync for UnbindFence {}

impl UnbindFence {
    /// Arms `action(data)` to run when `dev` is unbound.
    ///
    /// # Safety
    ///
    /// Until [`UnbindFence::disarm`] returns, calling `action(data)` once, from the unbinding of
    /// `dev`, is sound, and ends every use the registration makes of borrowed data.
    pub unsafe fn arm(
        dev: &Device<Bound>,
        action: unsafe extern "C" fn(*mut c_void),
        data: *mut c_void,
    ) -> Result<Self> {
        // SAFETY: `dev` is a bound device; the caller vouches for `action(data)`.
        to_result(unsafe { bindings::devm_add_action(dev.as_raw(), Some(action), data) })?;
        // INVARIANT: The action is registered.
        Ok(Self {
            dev: dev.into(),
            action,
            data,
        })
    }

    /// Arms `action(data)` on the device of `binding`, if there is a binding; if that fails,
    /// runs `undo`, which ends the registration.
    ///
    /// # Safety
    ///
    /// As for [`UnbindFence::arm`].
    pub unsafe fn arm_opt(
        binding: Option<Binding<'_>>,
        action: unsafe extern "C" fn(*mut c_void),
        data: *mut c_void,
        undo: impl FnOnce(),
    ) -> Result<Option<Self>> {
        let Some(binding) = binding else {
            return Ok(None);
        };
        // SAFETY: By the safety requirements of this function.
        unsafe { binding.fence(action, data) }
            .map(Some)
            .inspect_err(|_| undo())
    }

    /// Takes the fence out of a registration being dropped, through a pointer to its field.
    ///
    /// The registration's callbacks may still run while `drop` starts, holding shared references
    /// to its other fields: a projection of the pinned registration would make unique references
    /// to all of them.
    ///
    /// # Safety
    ///
    /// `fence` is valid for reads and writes, and nothing else accesses it meanwhile.
    pub unsafe fn take(fence: *mut Option<Self>) -> Option<Self> {
        // SAFETY: By the safety requirements.
        unsafe { (*fence).take() }
    }

    /// Disarms `fence` if there is one: `true` if the registration is to be ended by its owner,
    /// that is without a fence, or if [`UnbindFence::disarm`] says so.
    pub fn disarm_opt(fence: Option<Self>) -> bool {
        match fence {
            Some(fence) => fence.disarm(),
            None => true,
        }
    }

    /// Disarms the fence: `true` if its action had not run and now will not, `false` if the
    /// device was unbound and the action ran.
    pub fn disarm(self) -> bool {
        // SAFETY: `dev` is a valid device; removing an action that already ran finds nothing.
        unsafe {
            bindings::devm_remove_action_nowarn(self.dev.as_raw(), Some(self.action), self.data)
                == 0
        }
    }
}

/// A driver's binding to its device, as a lifetime: `'a` lasts until the device is unbound.
///
/// Only bus abstractions make one (with [`Binding::new`]), for the probe of their driver. `'a`
/// is invariant: a binding cannot be shortened, so a handler that must outlive it cannot borrow
/// anything that dies before the device is unbound.
pub struct Binding<'a, D = Device<Bound>> {
    dev: &'a D,
    _invariant: PhantomData<fn(&'a ()) -> &'a ()>,
}

impl<D> Clone for Binding<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D> Copy for Binding<'_, D> {}

impl<'a, D: AsRef<Device<Bound>>> Binding<'a, D> {
    /// The binding of `dev`, for all of `'a`.
    ///
    /// # Safety
    ///
    /// Whatever outlives `'a` stays valid until the devres actions of `dev`'s current binding
    /// have run, at unbind.
    pub unsafe fn new(dev: &'a D) -> Self {
        Self {
            dev,
            _invariant: PhantomData,
        }
    }

    /// The bound device.
    pub fn device(&self) -> &'a D {
        self.dev
    }

    /// The same binding, of the generic device.
    pub fn generic(self) -> Binding<'a> {
        Binding {
            dev: self.dev.as_ref(),
            _invariant: PhantomData,
        }
    }

    /// Arms a fence on the bound device; see [`UnbindFence::arm`].
    ///
    /// # Safety
    ///
    /// As for [`UnbindFence::arm`].
    pub unsafe fn fence(
        &self,
        action: unsafe extern "C" fn(*mut c_void),
        data: *mut c_void,
    ) -> Result<UnbindFence> {
        // SAFETY: By the safety requirements of this function.
        unsafe { UnbindFence::arm(self.dev.as_ref(), action, data) }
    }
}

#[cfg(CONFIG_KUNIT)]
#[macros::kunit_tests(rust_kernel_unbind_fence)]
mod tests {
    use super::Binding;
    use crate::{
        faux,
        prelude::*,
        workqueue::{
            self,
            new_scoped_work,
            ScopedHandler,
            ScopedWork,
            WorkQueue, //
        }, //
    };

    struct Nop;

    impl ScopedHandler for Nop {
        fn run(&self) {}
    }

    #[test]
    fn a_leaked_work_item_is_disabled_at_unbind() -> Result {
        let reg = faux::Registration::new(c"rust-unbind-fence", None)?;
        // SAFETY: `Nop` borrows nothing; the binding ends when `reg` is dropped.
        let binding = unsafe { Binding::new(reg.as_ref()) };
        let queue = || WorkQueue::System(workqueue::system());

        // Dropped before unbind: the fence is disarmed, and unbind finds nothing to do.
        let dropped = KBox::pin_init(new_scoped_work!(for binding, Nop, queue()), GFP_KERNEL)?;
        drop(dropped);

        let leaked = KBox::pin_init(new_scoped_work!(for binding, Nop, queue()), GFP_KERNEL)?;
        let raw: *const ScopedWork<Nop> = &*leaked;
        core::mem::forget(leaked);
        // SAFETY: The work item is leaked: its memory stays valid.
        let work = unsafe { &*raw };
        // Unbinding the device runs the fence, which disables the leaked work item.
        drop(reg);
        assert!(!work.queue());
        Ok(())
    }
}
