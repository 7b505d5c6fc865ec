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
//! # Ending before the devres actions
//!
//! A leaked registration's handler may use what a `&Device<Bound>` gives, [`Devres::access`]
//! included, which is sound only while none of the device's devres actions has run. So fences do
//! not wait for their place in `devres_release_all()`, which releases nodes newest first, each
//! fence among the other resources of the binding: the bus closes the binding's [`Gate`] at the
//! end of its remove (and when probe fails), after the driver's data was dropped and before
//! `devres_release_all()`, and closing ends every fence still armed, newest first. The release of
//! a fence's node then finds it ended.
//!
//! # Races with unbind
//!
//! - A registration is dropped while the gate closes: [`Devres`] settles this. Its data is
//!   revoked once, by the owner or by the gate, and the one that loses waits on the [`Devres`]'
//!   completion. A fence leaves the gate's list only once its action has run, so the gate also
//!   waits for an owner's ending in progress.
//! - A registration is made: once the gate is closed its borrows would outlive the binding, and
//!   a closed gate arms no fence: making the registration fails with `ENODEV`. Closing waits for
//!   the fences being armed, so that each is on the gate's list before it is ended.
//!
//! # Locking
//!
//! The gate's lock is held only to test, count and link, never across an allocation, so it is
//! never ordered before memory reclaim: the gate does not keep a shrinker's callback from arming
//! a fence (the registration's own locks may; under `PF_MEMALLOC`, as in direct reclaim or
//! kswapd, the allocation draws on the emergency reserves).
//!
//! [`Gate::close`] sleeps, in remove, with the device lock held, until the fences being armed
//! are on the gate's list; lockdep does not see this wait. Between being admitted and being
//! on the list, a fence is only allocated (which may enter reclaim, which never waits for a
//! device lock) and added: whoever arms it waits for nothing that remove holds. It then runs the
//! actions of the fences still armed, without the gate's lock, as `devres_release_all()` would
//! have, in remove with the device lock held.

use core::{
    cell::UnsafeCell,
    marker::{
        PhantomData,
        PhantomPinned, //
    },
    mem::ManuallyDrop,
    ptr::null_mut, //
};

use crate::{
    bindings,
    device::{
        Bound,
        Device, //
    },
    devres::{
        Devres,
        Inner, //
    },
    error::to_result,
    new_condvar,
    new_mutex,
    prelude::*,
    sync::{
        Arc,
        ArcBorrow,
        CondVar,
        Mutex, //
    }, //
};

/// How a registration ends, run once when its fence is revoked, and the fence's place on its
/// gate's list.
///
/// # Invariants
///
/// - Calling `action(data)` once, until the [`UnbindFence`] holding this has been dropped, is
///   sound and ends every use the registration makes of borrowed data.
/// - `gate` is the [`Gate`] the fence was armed through, which outlives `self` (it is freed after
///   it ended every fence armed through it).
/// - `link` is only accessed under `gate`'s lock; it is on the gate's list from when the fence
///   is armed until the action has run, or until `close()` took it off to end it.
#[pin_data(PinnedDrop)]
struct Ending {
    action: unsafe fn(*mut c_void),
    data: *mut c_void,
    gate: *const Gate,
    link: UnsafeCell<Link>,
    /// The gate's list points at `link`.
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: `Binding::fence`'s caller vouches that the action may run on the thread that unbinds
// the device (or whose probe fails) or on the one that drops the fence, whichever it is; `gate`
// is `Sync`, and `link` is only accessed under its lock.
unsafe impl Send for Ending {}

// SAFETY: `&Ending` gives access to nothing.
unsafe impl Sync for Ending {}

#[pinned_drop]
impl PinnedDrop for Ending {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: `Devres` drops its data once, when it is revoked, by whichever of
        // `UnbindFence`'s drop and the gate closing revokes first; the other waits for it. Either
        // way that is before the fence's drop has returned (type invariant).
        unsafe { (self.action)(self.data) };
        // Only now off the list: a gate closing meanwhile finds the fence there, and waits for
        // its end. (`Self` is `!Unpin`: the `&mut` does not claim `link` exclusively.)
        // SAFETY: The gate outlives `self` (type invariant).
        let gate = unsafe { &*self.gate };
        let mut state = gate.state.lock();
        // SAFETY: `link` is valid, we hold the gate's lock, and the link is on this gate's list
        // (the one it was armed through) or off every list (type invariant).
        unsafe { state.unlink(self.link.get()) };
    }
}

/// A fence's place on its gate's list of armed fences.
struct Link {
    older: *mut Link,
    newer: *mut Link,
    /// The `Devres` allocation that holds the fence's [`Ending`]; null while off the list.
    inner: *const Inner<Ending>,
}

/// Ends a registration once: when dropped, or at unbind if that comes first.
///
/// Leaked, the fence ends its registration when the device is unbound. Dropped, it ends it at
/// once, or, if the device is being unbound, waits until the unbinding did.
///
/// # Invariants
///
/// `ending` holds an `Ending` armed through the gate of a binding of its device; it is
/// dropped once, in `drop`.
#[must_use = "dropping the fence ends its registration"]
pub struct UnbindFence {
    /// Only dropped: that is what the fence does. Dropped by hand, so that the drop of a
    /// `Devres<Ending>` is made once, here, and not in each driver's module.
    ending: ManuallyDrop<Devres<Ending>>,
}

impl Drop for UnbindFence {
    #[inline(never)]
    fn drop(&mut self) {
        // SAFETY: `ending` is dropped once, here, and not used after.
        unsafe { ManuallyDrop::drop(&mut self.ending) }
    }
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
        action: unsafe fn(*mut c_void),
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
    /// runs now, or ran at unbind, which is waited for), otherwise through `without_fence`.
    pub fn end(fence: Option<Self>, without_fence: impl FnOnce()) {
        match fence {
            Some(fence) => drop(fence),
            None => without_fence(),
        }
    }
}

/// The fences of a binding: whether it still accepts them, and those armed and not ended, which
/// its bus ends when it closes the gate, at the end of unbind.
///
/// Made by bus abstractions only, for [`Binding::new`].
///
/// # Invariants
///
/// - `state.arming` counts the live `Admission`s: fences admitted while the gate was open and
///   not yet on the gate's list (or not made).
/// - `state.newest` heads the list of the fences armed through the gate whose action has not
///   run (or is running), newest first, but for one that `close()` took off to end it.
/// - Once `state.open` is false it stays false, and no `Admission` is made any more.
/// - The gate is freed after `close()` returned, once no handler that could use a [`Binding`] of
///   it runs any more ([`Gate::new`]'s safety requirements): so also after every fence armed
///   through it ended and left the list, and after the thread that armed the last fence stopped
///   using the gate, `state`'s unlock included (which may still touch the mutex after `close()`
///   took it).
#[pin_data]
pub struct Gate {
    #[pin]
    state: Mutex<GateState>,
    /// Signalled when the last fence being armed through a closed gate is on the gate's list.
    #[pin]
    drained: CondVar,
}

struct GateState {
    open: bool,
    /// Fences being armed: admitted while the gate was open, not yet on the gate's list (or
    /// not made).
    arming: usize,
    /// The newest fence on the list of the fences armed and not ended; null if none.
    newest: *mut Link,
}

// SAFETY: The links are only followed under the gate's lock, to fences that leave the list before
// they are freed (`Ending`'s invariants).
unsafe impl Send for GateState {}

impl GateState {
    /// Puts `link`, of the fence held by `inner`, on the list.
    ///
    /// # Safety
    ///
    /// `link` is the `link` of the `Ending` held by `inner`, off every list, and that `Ending`
    /// takes it off this one before it is freed.
    unsafe fn push(&mut self, link: *mut Link, inner: *const Inner<Ending>) {
        // SAFETY: `link` and `self.newest`, if any, are valid (safety requirements, and the
        // links on the list are).
        unsafe {
            *link = Link {
                older: self.newest,
                newer: null_mut(),
                inner,
            };
            if let Some(newest) = self.newest.as_mut() {
                newest.newer = link;
            }
        }
        self.newest = link;
    }

    /// Takes `link` off the list, if it is on it.
    ///
    /// # Safety
    ///
    /// `link` is valid, and on this list or off every list.
    unsafe fn unlink(&mut self, link: *mut Link) {
        // SAFETY: `link` is valid, and so are its neighbours on the list.
        unsafe {
            let link = &mut *link;
            if link.inner.is_null() {
                return;
            }
            match link.newer.as_mut() {
                Some(newer) => newer.older = link.older,
                None => self.newest = link.older,
            }
            if let Some(older) = link.older.as_mut() {
                older.newer = link.newer;
            }
            link.inner = core::ptr::null();
        }
    }

    /// Takes the newest fence off the list; returns its `Devres` allocation.
    fn pop(&mut self) -> Option<Arc<Inner<Ending>>> {
        let link = self.newest;
        if link.is_null() {
            return None;
        }
        // SAFETY: The links on the list are valid.
        let inner = unsafe { (*link).inner };
        // SAFETY: `link` is on the list.
        unsafe { self.unlink(link) };
        // Its `Ending` was on the list and the caller holds the gate's lock, so the `Ending`'s
        // drop, which takes that lock before it returns, has not returned: the allocation still
        // has the reference its devres node holds (taken by `Devres::new`), dropped only later.
        // SAFETY: `inner` comes from `Arc::as_ptr()` in `arm()`, its count is not zero (above),
        // and a `Devres` is never a `UniqueArc`.
        Some(unsafe { ArcBorrow::from_raw(inner) }.into())
    }
}

/// A fence admitted by an open [`Gate`], until it is on the gate's list (or was not made):
/// [`Gate::close`] waits for it.
struct Admission<'a>(&'a Gate);

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        // INVARIANT: This admission ends.
        state.arming -= 1;
        if state.arming == 0 && !state.open {
            self.0.drained.notify_all();
        }
    }
}

impl Gate {
    /// The gate of `dev`'s binding, freed when its devres actions have run.
    ///
    /// # Safety
    ///
    /// Called by the bus abstraction before its driver's probe, so that the gate is `dev`'s first
    /// devres action of this binding and is freed after every fence armed through it ran: no
    /// handler that could use a [`Binding`] of it (to arm a fence, say) runs any more by then.
    pub unsafe fn new(dev: &Device<Bound>) -> Result<&Gate> {
        let gate = KBox::pin_init(
            pin_init!(Gate {
                state <- new_mutex!(GateState {
                    open: true,
                    arming: 0,
                    newest: null_mut(),
                }),
                drained <- new_condvar!(),
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

    /// Closes the gate and ends every fence armed through it, newest first: from now on no
    /// fence is armed through it, and no registration whose fence it admitted runs. Returns once
    /// each has ended (an owner's drop in progress included).
    ///
    /// A bus calls this at the end of its remove (and when probe fails), once the driver's data
    /// is dropped, before the device's devres actions run: a leaked registration may use those
    /// resources until it is ended.
    pub fn close(&self) {
        let mut state = self.state.lock();
        // INVARIANT: The gate never opens again, and admits nothing from now on.
        state.open = false;
        while state.arming > 0 {
            self.drained.wait(&mut state);
        }
        while let Some(inner) = state.pop() {
            drop(state);
            // As the release of the fence's node would, without the grace period.
            // SAFETY: Nothing accesses an `Ending` through its `Revocable` but `arm()`, whose
            // access ended before it put the fence on the list.
            if unsafe { inner.data.revoke_nosync() } {
                inner.revocation.complete_all();
            } else {
                // Its owner is ending it: wait until the action has run.
                inner.revocation.wait_for_completion();
            }
            state = self.state.lock();
        }
    }

    /// Admits a fence to be armed, if the gate is open, until the admission is dropped.
    fn admit(&self) -> Result<Admission<'_>> {
        let mut state = self.state.lock();
        if !state.open {
            return Err(ENODEV);
        }
        // INVARIANT: One more admission, returned.
        state.arming += 1;
        Ok(Admission(self))
    }
}

/// A driver's binding to its device, as a lifetime: `'a` lasts until the device is unbound.
///
/// Only bus abstractions make one (with [`Binding::new`]), for the probe of their driver. `'a`
/// is invariant: a binding cannot be shortened, so a handler that must outlive it cannot borrow
/// anything that dies before the device is unbound.
///
/// # Invariants
///
/// Whatever outlives `'a` stays valid until `gate`, the gate of `dev`'s current binding, is
/// closed, which is after the driver's data is dropped and before `dev`'s devres actions run.
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
    ///   driver registers with devres, and is closed ([`Gate::close`]) after the driver's data is
    ///   dropped and before the devres actions run.
    pub unsafe fn new(dev: &'a D, gate: &'a Gate) -> Self {
        Self {
            dev,
            gate,
            _invariant: PhantomData,
        }
    }

    /// The bound device, for as long as the binding lasts.
    ///
    /// A leaked registration may use it until its fence ends it, which is before the device's
    /// devres actions run (see the module documentation): so `Devres::access` with it is sound.
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
    /// (which runs it then); fails with `ENODEV` once the binding's gate is closed (at the end of
    /// the bus's remove), in which case the caller undoes its registration. Sleeps; may be
    /// called from memory reclaim (see "Locking" in the module documentation).
    ///
    /// # Safety
    ///
    /// Until the fence has been dropped, calling `action(data)` once, on the thread that unbinds
    /// the device (or whose probe fails) or on the one that drops the fence, is sound, and ends
    /// every use the registration makes of borrowed data. `action` does not drop this fence
    /// (the drop would wait for the action).
    pub unsafe fn fence(
        &self,
        action: unsafe fn(*mut c_void),
        data: *mut c_void,
    ) -> Result<UnbindFence> {
        // SAFETY: By the safety requirements of this function.
        unsafe { arm(self.dev.as_ref(), self.gate, action, data) }
    }
}

/// [`Binding::fence`]'s work, for the device whatever its bus: not generic, so that a driver's
/// module does not carry a copy of it.
///
/// # Safety
///
/// As for [`Binding::fence`], with `dev` and `gate` those of the binding.
unsafe fn arm(
    dev: &Device<Bound>,
    gate: &Gate,
    action: unsafe fn(*mut c_void),
    data: *mut c_void,
) -> Result<UnbindFence> {
    // Admitted, the fence holds off `close()`, so that it is on the gate's list before `close()`
    // ends what is there.
    let admission = gate.admit()?;
    // An initialiser, not an `Ending`: should allocating fail, no `Ending` is dropped, so the
    // action does not run (the caller undoes the registration itself). Once initialised,
    // nothing in `Devres::new` can fail.
    // INVARIANT: The caller vouches for `action(data)` until the fence has been dropped; `gate`
    // outlives the fences it admits; `link` goes on the list below.
    let ending = pin_init!(Ending {
        action,
        data,
        gate,
        link: UnsafeCell::new(Link {
            older: null_mut(),
            newer: null_mut(),
            inner: core::ptr::null(),
        }),
        _pin: PhantomPinned,
    });
    let made = Devres::new(dev, ending)?;
    // SAFETY: Not revoked while the reference lives (this statement): the owner does not have
    // the fence yet, `close()`, which the admission holds off, cannot have taken it off the list,
    // where it is not yet, and `devres_release_all()` runs only after `close()`.
    let link = unsafe { made.inner.data.access() }.link.get();
    // SAFETY: `link` is that of the `Ending` in `made.inner`, new, and taken off the list by the
    // `Ending`'s drop.
    unsafe { gate.state.lock().push(link, Arc::as_ptr(&made.inner)) };
    drop(admission);
    Ok(UnbindFence {
        ending: ManuallyDrop::new(made),
    })
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

    /// The binding of `reg`'s faux device, and its gate. A test unbinds the device as a bus
    /// does: it closes the gate, then drops `reg`.
    fn bind(reg: &faux::Registration) -> Result<(Binding<'_>, &Gate)> {
        let dev: &Device<Bound> = reg.as_ref().as_ref();
        // SAFETY: The gate is the first devres action a test adds to its faux device, and nothing
        // that could use the gate runs after the device is unbound.
        let gate = unsafe { Gate::new(dev) }?;
        // SAFETY: What a test arms borrows nothing that dies before `reg` is dropped, and the
        // test closes the gate before it drops `reg`.
        Ok((unsafe { Binding::new(dev, gate) }, gate))
    }

    /// A fence's action that counts its runs in the `Atomic<i32>` that `data` points at.
    ///
    /// # Safety
    ///
    /// `data` points at a live `Atomic<i32>`.
    unsafe fn count(data: *mut c_void) {
        // SAFETY: By the safety requirements.
        unsafe { &*data.cast::<Atomic<i32>>() }.fetch_add(1, Relaxed);
    }

    /// The `data` of [`count`] for `runs`.
    fn runs_in(runs: &Atomic<i32>) -> *mut c_void {
        core::ptr::from_ref(runs).cast_mut().cast()
    }

    struct Nop;

    impl ScopedHandler for Nop {
        fn run(&self) {}
    }

    #[test]
    fn a_leaked_work_item_is_disabled_at_unbind() -> Result {
        let reg = faux::Registration::new(c"rust-unbind-fence", None)?;
        let (binding, gate) = bind(&reg)?;
        let queue = || WorkQueue::System(workqueue::system());

        // Dropped before unbind: the fence ends the work item then, and unbind finds nothing.
        let dropped = KBox::pin_init(new_scoped_work!(for binding, Nop, queue()), GFP_KERNEL)?;
        drop(dropped);

        let leaked = KBox::pin_init(new_scoped_work!(for binding, Nop, queue()), GFP_KERNEL)?;
        let raw: *const ScopedWork<Nop> = &*leaked;
        core::mem::forget(leaked);
        // SAFETY: The work item is leaked: its memory stays valid.
        let work = unsafe { &*raw };
        // Unbinding the device (closing the gate) runs the fence, which disables the leaked work
        // item.
        gate.close();
        drop(reg);
        assert!(!work.queue());
        Ok(())
    }

    /// What [`Owner`]'s drop saw. Static, as a devres resource is `'static`; reset by its test.
    struct Seen {
        runs: Atomic<i32>,
        runs_when_ended: Atomic<i32>,
        without_fence: Atomic<i32>,
    }

    static SEEN: Seen = Seen {
        runs: Atomic::new(0),
        runs_when_ended: Atomic::new(-1),
        without_fence: Atomic::new(0),
    };

    /// Owns a fence, and records how often its action had run when ending it returned.
    struct Owner(Option<UnbindFence>);

    impl Drop for Owner {
        fn drop(&mut self) {
            UnbindFence::end(self.0.take(), || {
                SEEN.without_fence.fetch_add(1, Relaxed);
            });
            SEEN.runs_when_ended.store(SEEN.runs.load(Relaxed), Relaxed);
        }
    }

    /// What a fence's action saw of a `Devres` registered after the fence: -1 if it did not
    /// run, 1 if the `Devres` was still there, 0 if it was revoked already.
    struct Order {
        later: Atomic<*mut c_void>,
        saw: Atomic<i32>,
    }

    static ORDER: Order = Order {
        later: Atomic::new(core::ptr::null_mut()),
        saw: Atomic::new(-1),
    };

    /// A fence's action that records whether the `Devres<u32>` at `ORDER.later`, if set, is
    /// still there.
    ///
    /// # Safety
    ///
    /// `ORDER.later` is null or points at a live `Devres<u32>`.
    unsafe fn look(_data: *mut c_void) {
        // SAFETY: By the safety requirements.
        let Some(later) = (unsafe {
            ORDER
                .later
                .load(Relaxed)
                .cast::<devres::Devres<u32>>()
                .as_ref()
        }) else {
            return;
        };
        ORDER
            .saw
            .store(i32::from(later.try_access().is_some()), Relaxed);
    }

    /// A leaked registration may use devres resources with `Devres::access` until its fence
    /// ends it: so the fence must end it before any of the device's devres actions runs, also
    /// those registered after it, which `devres_release_all()` releases first.
    #[test]
    fn leaked_fences_end_before_the_devres_actions_run() -> Result {
        ORDER.saw.store(-1, Relaxed);
        ORDER.later.store(core::ptr::null_mut(), Relaxed);
        let reg = faux::Registration::new(c"rust-unbind-fence-order", None)?;
        let (binding, gate) = bind(&reg)?;
        // SAFETY: `look` reads `ORDER.later` if set, which is set below and freed after the
        // fence ended.
        let fence = unsafe { binding.fence(look, core::ptr::null_mut()) }?;
        // Registered after the fence: `devres_release_all()` releases it first.
        let later = KBox::into_raw(KBox::new(
            devres::Devres::new(binding.device(), 7u32)?,
            GFP_KERNEL,
        )?);
        ORDER.later.store(later.cast(), Relaxed);
        gate.close();
        drop(reg);
        drop(fence);
        ORDER.later.store(core::ptr::null_mut(), Relaxed);
        // SAFETY: `later` comes from `KBox::into_raw` above, and the fence that used it ended.
        drop(unsafe { KBox::from_raw(later) });
        assert_eq!(ORDER.saw.load(Relaxed), 1);
        Ok(())
    }

    #[test]
    fn a_fence_dropped_during_unbind_ends_its_registration_once() -> Result {
        SEEN.runs.store(0, Relaxed);
        SEEN.runs_when_ended.store(-1, Relaxed);
        SEEN.without_fence.store(0, Relaxed);
        let reg = faux::Registration::new(c"rust-unbind-fence-drop", None)?;
        let (binding, gate) = bind(&reg)?;
        // SAFETY: `SEEN.runs` is static.
        let fence = unsafe { binding.fence(count, runs_in(&SEEN.runs)) }?;
        // Its owner is a devres resource, dropped by `devres_release_all()` after the gate ended
        // the fence, and before the release of the fence's own node.
        devres::register(binding.device(), Owner(Some(fence)), GFP_KERNEL)?;
        gate.close();
        drop(reg);
        // The registration had ended when the owner's drop returned, through the fence, and
        // neither the owner's drop nor the release of the fence's node ended it again.
        assert_eq!(SEEN.runs_when_ended.load(Relaxed), 1);
        assert_eq!(SEEN.runs.load(Relaxed), 1);
        assert_eq!(SEEN.without_fence.load(Relaxed), 0);
        Ok(())
    }

    /// The fence a [`drop_older`] action drops, and how often the older fence's action ran.
    static OLDER: Atomic<*mut c_void> = Atomic::new(core::ptr::null_mut());
    static OLDER_RUNS: Atomic<i32> = Atomic::new(0);

    /// A fence's action that drops the fence at `OLDER`, if set: its owner ending it while the
    /// gate ends the fences, after this one and before that one.
    ///
    /// # Safety
    ///
    /// `OLDER` is null or comes from `KBox::into_raw` of a `KBox<UnbindFence>`, not used elsewhere.
    unsafe fn drop_older(_data: *mut c_void) {
        let older = OLDER.xchg(core::ptr::null_mut(), Relaxed);
        if !older.is_null() {
            // SAFETY: By the safety requirements.
            drop(unsafe { KBox::from_raw(older.cast::<UnbindFence>()) });
        }
    }

    /// An owner ending its fence while the gate closes, with the fence still on the gate's list:
    /// the fence ends once, through the owner, and the gate does not end it again.
    #[test]
    fn a_fence_its_owner_ends_while_the_gate_closes_ends_once() -> Result {
        OLDER_RUNS.store(0, Relaxed);
        OLDER.store(core::ptr::null_mut(), Relaxed);
        let reg = faux::Registration::new(c"rust-unbind-fence-owner", None)?;
        let (binding, gate) = bind(&reg)?;
        // SAFETY: `OLDER_RUNS` is static.
        let older = KBox::new(
            unsafe { binding.fence(count, runs_in(&OLDER_RUNS)) }?,
            GFP_KERNEL,
        )?;
        OLDER.store(KBox::into_raw(older).cast(), Relaxed);
        // SAFETY: `OLDER` holds the older fence, which nothing else uses.
        let newer = unsafe { binding.fence(drop_older, core::ptr::null_mut()) }?;
        // Ends `newer` first, whose action drops `older`, which is still on the list.
        gate.close();
        let runs = OLDER_RUNS.load(Relaxed);
        let left = OLDER.load(Relaxed);
        drop(newer);
        drop(reg);
        assert!(left.is_null());
        assert_eq!(runs, 1);
        assert_eq!(OLDER_RUNS.load(Relaxed), 1);
        Ok(())
    }

    #[test]
    fn a_fence_dropped_before_unbind_acts_at_its_drop_only() -> Result {
        let runs = Atomic::new(0);
        let reg = faux::Registration::new(c"rust-unbind-fence-early", None)?;
        let (binding, gate) = bind(&reg)?;
        // SAFETY: `runs` outlives the fence, dropped below.
        let fence = unsafe { binding.fence(count, runs_in(&runs)) }?;
        assert_eq!(runs.load(Relaxed), 0);
        drop(fence);
        assert_eq!(runs.load(Relaxed), 1);
        gate.close();
        drop(reg);
        assert_eq!(runs.load(Relaxed), 1);
        Ok(())
    }

    #[test]
    fn a_closed_gate_arms_no_fence() -> Result {
        let (runs, undone) = (Atomic::new(0), Atomic::new(0));
        let reg = faux::Registration::new(c"rust-unbind-fence-gate", None)?;
        let (binding, gate) = bind(&reg)?;
        // SAFETY: `runs` outlives the device's binding and the fence, both ended below.
        let armed = unsafe { binding.fence(count, runs_in(&runs)) }?;
        // As a bus does at the end of unbind: the fence armed before ends, and a fence armed from
        // now on would never run.
        gate.close();
        assert_eq!(runs.load(Relaxed), 1);
        // SAFETY: As above.
        let refused = unsafe { binding.fence(count, runs_in(&runs)) };
        assert_eq!(refused.err(), Some(ENODEV));
        // A registration that cannot arm its fence is undone by the caller's `undo`, once.
        let undo = || {
            undone.fetch_add(1, Relaxed);
        };
        // SAFETY: As above.
        let refused = unsafe { UnbindFence::arm_opt(Some(binding), count, runs_in(&runs), undo) };
        assert_eq!(refused.err(), Some(ENODEV));
        assert_eq!(undone.load(Relaxed), 1);
        assert_eq!(runs.load(Relaxed), 1);
        drop(reg);
        // The fence armed before ran once, and dropping it afterwards does not run it again.
        assert_eq!(runs.load(Relaxed), 1);
        drop(armed);
        assert_eq!(runs.load(Relaxed), 1);
        Ok(())
    }

    /// Arming allocates; a shrinker may arm a fence (by making a registration) from reclaim. Were
    /// the allocation made under the gate's lock, lockdep would see that lock taken both before
    /// reclaim (here, first) and within it (then), and report a circular dependency. As reclaim
    /// does, the second arming runs within `fs_reclaim` with `PF_MEMALLOC` set (so that its own
    /// allocation does not enter reclaim again).
    ///
    /// The case itself passes either way: the report is what fails, in the guest's log, which
    /// the test harness fails on. Lockdep reports once per boot, so an earlier report would hide
    /// this one (and fails the run first).
    #[cfg(CONFIG_PROVE_LOCKING)]
    #[test]
    fn a_fence_armed_from_reclaim_allocates_under_no_lock() -> Result {
        use crate::bindings;

        let runs = Atomic::new(0);
        let reg = faux::Registration::new(c"rust-unbind-fence-reclaim", None)?;
        let (binding, gate) = bind(&reg)?;
        // SAFETY: `runs` outlives both fences, dropped below.
        let before = unsafe { binding.fence(count, runs_in(&runs)) }?;
        let task = crate::task::Task::current_raw();
        let flags = GFP_KERNEL.as_raw();
        // SAFETY: As `__perform_reclaim()`: `fs_reclaim_acquire()`, then the read-modify-write of
        // the current task's `flags` (no other task writes them) of `memalloc_noreclaim_save()`;
        // both are undone below, on this task, in reverse.
        let old = unsafe {
            bindings::fs_reclaim_acquire(flags);
            let old = (*task).flags;
            (*task).flags |= bindings::PF_MEMALLOC;
            old
        };
        // SAFETY: As above.
        let within = unsafe { binding.fence(count, runs_in(&runs)) };
        // SAFETY: Undoes the above, in reverse (`memalloc_noreclaim_restore()`).
        unsafe {
            (*task).flags =
                ((*task).flags & !bindings::PF_MEMALLOC) | (old & bindings::PF_MEMALLOC);
            bindings::fs_reclaim_release(flags);
        }
        let within = within?;
        drop(within);
        drop(before);
        assert_eq!(runs.load(Relaxed), 2);
        gate.close();
        drop(reg);
        Ok(())
    }
}
