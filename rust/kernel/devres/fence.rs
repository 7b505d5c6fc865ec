// SPDX-License-Identifier: GPL-2.0

//! A backstop at unbind for registrations that lend borrowed data to C.
//!
//! A registration whose callbacks reach data a driver borrows from its device binding (a
//! notifier, a shrinker, a work item) ends in its drop. Safe code may leak it instead
//! (`mem::forget`, a reference cycle); the C side would then call into data whose borrow has
//! ended. The memory of a leaked value is never freed, so the registration itself stays valid:
//! what must not outlive the binding is its use. An [`UnbindFence`] is a [`Devres`] whose data
//! is the registration's ending: whichever revokes it first, the owner dropping the fence or the
//! device's unbinding, ends the registration, and the other waits until that is done.
//!
//! That is in time only for borrows that last until the device is unbound. A [`Binding<'a>`]
//! says `'a` does: a bus abstraction hands one to its driver's probe, and a registration that
//! takes one accepts only handlers that outlive `'a`.
//!
//! # Races with unbind
//!
//! `devres_release_all()` first takes every node off the device's list, then releases them one
//! by one. Two things may happen meanwhile, on another thread or in an earlier release:
//!
//! - A registration is dropped: [`Devres`] settles this. Its data is revoked once, by the owner
//!   or by the release, and the one that loses waits on the [`Devres`]' completion. The owner
//!   never waits for a release that has not started (it revokes first), so a registration
//!   dropped by an earlier devres action of the same device does not deadlock.
//! - A registration is made: its node would be added to a list nobody releases any more, and
//!   its borrows would outlive the binding. [`Devres`] cannot refuse this, as it cannot tell
//!   that unbinding has started. A bus closes the binding's [`Gate`] when unbinding starts,
//!   before `devres_release_all()`, and a closed gate arms no fence: making the registration
//!   fails with `ENODEV`.

use core::marker::PhantomData;

use crate::{
    bindings,
    device::{
        Bound,
        Device, //
    },
    devres::Devres,
    error::to_result,
    new_mutex,
    prelude::*,
    sync::Mutex, //
};

/// How a registration ends, run once when its fence is revoked.
///
/// # Invariants
///
/// Calling `action(data)` once, until the [`UnbindFence`] holding this has been dropped, is sound
/// and ends every use the registration makes of borrowed data.
#[pin_data(PinnedDrop)]
struct Ending {
    action: unsafe extern "C" fn(*mut c_void),
    data: *mut c_void,
}

// SAFETY: `Binding::fence`'s caller vouches that the action may run from the unbinding of the
// device, on whichever thread unbinds it.
unsafe impl Send for Ending {}

// SAFETY: `&Ending` gives access to nothing.
unsafe impl Sync for Ending {}

#[pinned_drop]
impl PinnedDrop for Ending {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: `Devres` drops its data once, when it is revoked: from `UnbindFence`'s drop,
        // or from the unbinding while that drop waits for it. Either is before the fence has been
        // dropped (type invariant).
        unsafe { (self.action)(self.data) }
    }
}

/// Ends a registration once: when dropped, or at unbind if that comes first.
///
/// Leaked, the fence ends its registration when the device is unbound. Dropped, it ends it at
/// once, or, if the device is being unbound, waits until the unbinding did.
#[must_use = "dropping the fence ends its registration"]
pub struct UnbindFence {
    /// Never read: dropping it is what the fence does.
    _ending: Devres<Ending>,
}

impl UnbindFence {
    /// Arms `action(data)` on the device of `binding`, if there is a binding; if that fails,
    /// runs `undo`, which ends the registration.
    ///
    /// # Safety
    ///
    /// As for [`Binding::fence`].
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

    /// Ends a registration being dropped, once: through its fence if it has one (whose action
    /// runs now, or ran at unbind, which is waited for), otherwise through `end`.
    pub fn end(fence: Option<Self>, end: impl FnOnce()) {
        match fence {
            Some(fence) => drop(fence),
            None => end(),
        }
    }
}

/// Whether a binding still accepts fences: closed by its bus when unbinding starts.
///
/// Made by bus abstractions only, for [`Binding::new`].
#[pin_data]
pub struct Gate {
    #[pin]
    open: Mutex<bool>,
}

impl Gate {
    /// The gate of `dev`'s binding, freed when its devres actions have run.
    ///
    /// # Safety
    ///
    /// Called by the bus abstraction before its driver's probe, so that the gate is `dev`'s first
    /// devres action of this binding and is freed after every fence armed through it ran: no
    /// handler that could use a [`Binding`] of it runs any more by then.
    pub unsafe fn new(dev: &Device<Bound>) -> Result<&Gate> {
        let gate = KBox::pin_init(
            pin_init!(Gate {
                open <- new_mutex!(true),
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: The gate is never moved: it is freed through the same pointer.
        let gate = KBox::into_raw(unsafe { Pin::into_inner_unchecked(gate) });
        // SAFETY: `dev` is bound; `free` takes the gate back once, at unbind (or now, on
        // failure).
        to_result(unsafe {
            bindings::devm_add_action_or_reset(dev.as_raw(), Some(Self::free), gate.cast())
        })?;
        // SAFETY: The gate lives until `dev`'s devres actions have run, after the handlers that
        // could reach it stopped (safety requirements).
        Ok(unsafe { &*gate })
    }

    /// # Safety
    ///
    /// `gate` comes from `KBox::into_raw` in [`Gate::new`]; called once.
    unsafe extern "C" fn free(gate: *mut c_void) {
        // SAFETY: By the safety requirements.
        drop(unsafe { KBox::from_raw(gate.cast::<Self>()) });
    }

    /// Closes the gate: from now on no fence is armed through it. A bus calls this when
    /// unbinding starts (and when probe fails), before the device's devres actions run.
    pub fn close(&self) {
        *self.open.lock() = false;
    }
}

/// A driver's binding to its device, as a lifetime: `'a` lasts until the device is unbound.
///
/// Only bus abstractions make one (with [`Binding::new`]), for the probe of their driver. `'a`
/// is invariant: a binding cannot be shortened, so a handler that must outlive it cannot borrow
/// anything that dies before the device is unbound.
pub struct Binding<'a, D = Device<Bound>> {
    dev: &'a D,
    gate: &'a Gate,
    _invariant: PhantomData<fn(&'a ()) -> &'a ()>,
}

impl<D> Clone for Binding<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D> Copy for Binding<'_, D> {}

impl<'a, D: AsRef<Device<Bound>>> Binding<'a, D> {
    /// The binding of `dev`, for all of `'a`, whose fences `gate` admits.
    ///
    /// # Safety
    ///
    /// - Whatever outlives `'a` stays valid until the devres actions of `dev`'s current binding
    ///   have run, at unbind.
    /// - `gate` is `dev`'s, made by [`Gate::new`] for this binding before anything else that the
    ///   driver registers with devres, and is closed before the devres actions run.
    pub unsafe fn new(dev: &'a D, gate: &'a Gate) -> Self {
        Self {
            dev,
            gate,
            _invariant: PhantomData,
        }
    }

    /// The bound device, for as long as the binding lasts.
    ///
    /// A leaked registration may still use it while the device's devres actions run, until its
    /// fence acts: a `Devres` registered after that fence is revoked by then, so such a handler
    /// must reach devres-managed resources with `Devres::try_access`, not `Devres::access`.
    pub fn device(&self) -> &'a D {
        self.dev
    }

    /// The same binding, of the generic device.
    pub fn generic(self) -> Binding<'a> {
        Binding {
            dev: self.dev.as_ref(),
            gate: self.gate,
            _invariant: PhantomData,
        }
    }

    /// Arms `action(data)` to run when the device is unbound, unless the fence is dropped first
    /// (which runs it then); fails with `ENODEV` once unbinding has started (from the bus's
    /// remove on), in which case the caller undoes its registration. Sleeps; not from memory
    /// reclaim (a shrinker's callback, say), as arming allocates under the gate's lock.
    ///
    /// # Safety
    ///
    /// Until the fence has been dropped, calling `action(data)` once, from the unbinding of the
    /// device or from the fence's drop, is sound, and ends every use the registration makes of
    /// borrowed data. `action` does not drop the fence (the drop would wait for the action).
    pub unsafe fn fence(
        &self,
        action: unsafe extern "C" fn(*mut c_void),
        data: *mut c_void,
    ) -> Result<UnbindFence> {
        // Held while arming: `close()` returns only once no fence is being armed, so every fence
        // is on the device's list before `devres_release_all()` takes it.
        let open = self.gate.open.lock();
        if !*open {
            return Err(ENODEV);
        }
        // An initialiser, not an `Ending`: should allocating fail, no `Ending` is dropped, so the
        // action does not run (the caller undoes the registration itself). Once initialised,
        // nothing in `Devres::new` can fail.
        // INVARIANT: The caller vouches for `action(data)` until the fence has been dropped.
        let ending = pin_init!(Ending { action, data });
        Ok(UnbindFence {
            _ending: Devres::new(self.dev.as_ref(), ending)?,
        })
    }
}

#[cfg(CONFIG_KUNIT)]
#[macros::kunit_tests(rust_kernel_unbind_fence)]
mod tests {
    use super::{
        Binding,
        Bound,
        Device,
        Gate,
        UnbindFence, //
    };
    use crate::{
        devres,
        faux,
        prelude::*,
        sync::atomic::{
            Atomic,
            Relaxed, //
        },
        workqueue::{
            self,
            new_scoped_work,
            ScopedHandler,
            ScopedWork,
            WorkQueue, //
        }, //
    };
    use core::ptr::null_mut;

    struct Nop;

    impl ScopedHandler for Nop {
        fn run(&self) {}
    }

    #[test]
    fn a_leaked_work_item_is_disabled_at_unbind() -> Result {
        let reg = faux::Registration::new(c"rust-unbind-fence", None)?;
        let dev: &Device<Bound> = reg.as_ref().as_ref();
        // SAFETY: The gate is the test's first devres action on the faux device, and nothing
        // that could use it runs after the device is unbound.
        let gate = unsafe { Gate::new(dev) }?;
        // SAFETY: `Nop` borrows nothing; the binding ends when `reg` is dropped. The gate is not
        // closed, which only matters to a fence armed during unbind: no thread arms one here.
        let binding = unsafe { Binding::new(dev, gate) };
        let queue = || WorkQueue::System(workqueue::system());

        // Dropped before unbind: the fence ends the work item then, and unbind finds nothing.
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

    static DROP_ACTED: Atomic<i32> = Atomic::new(0);
    static DROP_SEEN: Atomic<i32> = Atomic::new(-1);
    static DROP_BY_OWNER: Atomic<i32> = Atomic::new(0);

    extern "C" fn drop_action(_: *mut c_void) {
        DROP_ACTED.fetch_add(1, Relaxed);
    }

    /// Owns a fence, and records how often its action had run when ending it returned.
    struct Owner(Option<UnbindFence>);

    impl Drop for Owner {
        fn drop(&mut self) {
            UnbindFence::end(self.0.take(), || DROP_BY_OWNER.store(1, Relaxed));
            DROP_SEEN.store(DROP_ACTED.load(Relaxed), Relaxed);
        }
    }

    #[test]
    fn a_fence_dropped_during_unbind_ends_its_registration_once() -> Result {
        let reg = faux::Registration::new(c"rust-unbind-fence-drop", None)?;
        let dev: &Device<Bound> = reg.as_ref().as_ref();
        // SAFETY: As in the first test.
        let gate = unsafe { Gate::new(dev) }?;
        // SAFETY: The action borrows nothing; the binding ends when `reg` is dropped, and no
        // thread arms a fence during unbind.
        let binding = unsafe { Binding::new(dev, gate) };
        // SAFETY: `drop_action` uses nothing.
        let fence = unsafe { binding.fence(drop_action, null_mut()) }?;
        // Registered after the fence, so released before it: the owner is dropped while
        // `devres_release_all()` holds the fence's node on its private list, not yet released.
        devres::register(dev, Owner(Some(fence)), GFP_KERNEL)?;
        drop(reg);
        // The registration had ended when the owner's drop returned, through the fence, and the
        // release that came after did not end it again.
        assert_eq!(DROP_SEEN.load(Relaxed), 1);
        assert_eq!(DROP_ACTED.load(Relaxed), 1);
        assert_eq!(DROP_BY_OWNER.load(Relaxed), 0);
        Ok(())
    }

    static EARLY_ACTED: Atomic<i32> = Atomic::new(0);

    extern "C" fn early_action(_: *mut c_void) {
        EARLY_ACTED.fetch_add(1, Relaxed);
    }

    #[test]
    fn a_fence_dropped_before_unbind_acts_at_its_drop_only() -> Result {
        let reg = faux::Registration::new(c"rust-unbind-fence-early", None)?;
        let dev: &Device<Bound> = reg.as_ref().as_ref();
        // SAFETY: As in the first test.
        let gate = unsafe { Gate::new(dev) }?;
        // SAFETY: As in the second test.
        let binding = unsafe { Binding::new(dev, gate) };
        // SAFETY: `early_action` uses nothing.
        let fence = unsafe { binding.fence(early_action, null_mut()) }?;
        assert_eq!(EARLY_ACTED.load(Relaxed), 0);
        drop(fence);
        assert_eq!(EARLY_ACTED.load(Relaxed), 1);
        drop(reg);
        assert_eq!(EARLY_ACTED.load(Relaxed), 1);
        Ok(())
    }

    static GATE_ACTED: Atomic<i32> = Atomic::new(0);

    extern "C" fn gate_action(_: *mut c_void) {
        GATE_ACTED.fetch_add(1, Relaxed);
    }

    #[test]
    fn a_closed_gate_arms_no_fence() -> Result {
        let reg = faux::Registration::new(c"rust-unbind-fence-gate", None)?;
        let dev: &Device<Bound> = reg.as_ref().as_ref();
        // SAFETY: As in the first test.
        let gate = unsafe { Gate::new(dev) }?;
        // SAFETY: The action borrows nothing; the binding ends when `reg` is dropped, and no
        // thread arms a fence during unbind.
        let binding = unsafe { Binding::new(dev, gate) };
        // SAFETY: `gate_action` uses nothing.
        let armed = unsafe { binding.fence(gate_action, null_mut()) }?;
        // As a bus does when unbinding starts: a fence armed from now on would never run.
        gate.close();
        // SAFETY: As above.
        let refused = unsafe { binding.fence(gate_action, null_mut()) };
        assert_eq!(refused.err(), Some(ENODEV));
        drop(reg);
        // The fence armed before ran once, and dropping it afterwards does not run it again.
        assert_eq!(GATE_ACTED.load(Relaxed), 1);
        drop(armed);
        assert_eq!(GATE_ACTED.load(Relaxed), 1);
        Ok(())
    }
}
