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
//!
//! # Races with unbind
//!
//! `devres_release_all()` first takes every action off the device's list, then runs them one by
//! one. Two things may happen meanwhile, on another thread or in an earlier action:
//!
//! - A registration is dropped: its fence is no longer on the list (`-ENOENT`), but its action
//!   may not have run yet. The fence and its action share a [`Node`] that each tries to claim:
//!   if the owner claims it first, it ends the registration itself and the action, when it
//!   runs, only frees the node; if the action did, the owner waits until the action finished.
//!   The owner never waits for an action that has not started, so a registration dropped by an
//!   earlier devres action of the same device does not deadlock.
//! - A registration is made: its action would be added to a list nobody releases any more. A
//!   bus closes the binding's [`Gate`] when unbinding starts, before `devres_release_all()`, and
//!   a closed gate arms no fence: making the registration fails with `ENODEV`.

use core::{
    marker::PhantomData,
    ptr::NonNull, //
};

use crate::{
    bindings,
    device::{
        Bound,
        Device, //
    },
    error::to_result,
    new_mutex,
    prelude::*,
    sync::{
        aref::ARef,
        atomic::{
            Atomic,
            Full, //
        },
        Completion,
        Mutex, //
    }, //
};

/// The fence is armed: neither its action nor its owner has claimed the registration.
const ARMED: i32 = 0;
/// The action claimed the registration: it ends it, then completes `done`.
const ACTING: i32 = 1;
/// The owner claimed the registration: it ends it, and the action frees the node.
const OWNED: i32 = 2;

/// What a fence shares with its devres action.
///
/// # Invariants
///
/// - `state` goes from [`ARMED`] to [`ACTING`] or [`OWNED`], once.
/// - If `state` is [`ACTING`], `done` is completed only after `action(data)` returned.
/// - While `state` is [`OWNED`], the node belongs to the devres action, which frees it; otherwise
///   to the [`UnbindFence`].
#[pin_data]
struct Node {
    state: Atomic<i32>,
    #[pin]
    done: Completion,
    action: unsafe extern "C" fn(*mut c_void),
    data: *mut c_void,
}

impl Node {
    /// The devres action of every fence.
    ///
    /// # Safety
    ///
    /// `node` comes from [`UnbindFence::arm`], whose caller vouches for its action; the devres
    /// core calls this once.
    unsafe extern "C" fn run(node: *mut c_void) {
        let node = node.cast::<Self>();
        // SAFETY: `node` is a live node (safety requirements): the owner frees it only after
        // `done`, or leaves it to us.
        let this = unsafe { &*node };
        if this.state.cmpxchg(ARMED, ACTING, Full).is_ok() {
            // SAFETY: The owner has not claimed the registration, and waits for `done` before it
            // drops it; the caller of `arm` vouches for `action(data)`.
            unsafe { (this.action)(this.data) };
            this.done.complete_all();
        } else {
            // The owner ended the registration and is gone: `data` may be freed.
            // SAFETY: By the type invariant, an `OWNED` node is ours, from `KBox::into_raw`.
            drop(unsafe { KBox::from_raw(node) });
        }
    }
}

/// Ends a registration at unbind unless disarmed first.
///
/// Dropped without [`UnbindFence::disarm`], the fence stays armed: its action runs at unbind.
///
/// # Invariants
///
/// `node` is a live [`Node`] (from `KBox::into_raw`) whose [`Node::run`] is registered as a
/// devres action of `dev`, or was taken off the list by `devres_release_all()`; its state is not
/// [`OWNED`].
#[must_use = "a fence that is not disarmed acts at unbind"]
pub struct UnbindFence {
    dev: ARef<Device>,
    node: NonNull<Node>,
}

// SAFETY: The fence only passes its node to the devres core and to `Node::run`, which may run on
// any thread; the node's state is atomic.
unsafe impl Send for UnbindFence {}

// SAFETY: `&UnbindFence` gives no access to anything.
unsafe impl Sync for UnbindFence {}

impl UnbindFence {
    /// The node of a fence for `action(data)`, allocated before [`Binding::fence`] takes its
    /// gate's lock.
    fn node(action: unsafe extern "C" fn(*mut c_void), data: *mut c_void) -> Result<*mut Node> {
        let node = KBox::pin_init(
            pin_init!(Node {
                state: Atomic::new(ARMED),
                done <- Completion::new(),
                action,
                data,
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: The node is never moved: it is freed through the same pointer.
        Ok(KBox::into_raw(unsafe { Pin::into_inner_unchecked(node) }))
    }

    /// Arms `node` to run when `dev` is unbound. Only [`Binding::fence`] calls this, with its
    /// gate open.
    ///
    /// # Safety
    ///
    /// `node` comes from [`UnbindFence::node`] and is not used by the caller after this. Until
    /// [`UnbindFence::disarm`] returns, calling its `action(data)` once, from the unbinding of
    /// `dev`, is sound, and ends every use the registration makes of borrowed data.
    unsafe fn arm(dev: &Device<Bound>, node: *mut Node) -> Result<Self> {
        // SAFETY: `dev` is a bound device; `Node::run` is sound for `node` (the caller vouches for
        // `action(data)`).
        let ret = unsafe { bindings::devm_add_action(dev.as_raw(), Some(Node::run), node.cast()) };
        if let Err(e) = to_result(ret) {
            // SAFETY: `node` is from `KBox::into_raw`, and no action was registered.
            drop(unsafe { KBox::from_raw(node) });
            return Err(e);
        }
        // INVARIANT: The action is registered, and nothing claimed the node.
        Ok(Self {
            dev: dev.into(),
            // SAFETY: `KBox::into_raw` never returns null.
            node: unsafe { NonNull::new_unchecked(node) },
        })
    }

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

    /// Disarms `fence` if there is one: `true` if the registration is to be ended by its owner,
    /// that is without a fence, or if [`UnbindFence::disarm`] says so.
    pub fn disarm_opt(fence: Option<Self>) -> bool {
        match fence {
            Some(fence) => fence.disarm(),
            None => true,
        }
    }

    /// Disarms the fence: `true` if its action did not run and now will not, so that the owner
    /// ends the registration; `false` if the device was unbound and the action ended it. Waits
    /// for an action that is running.
    pub fn disarm(self) -> bool {
        let node = self.node.as_ptr();
        // SAFETY: `dev` is a valid device; an action taken off its list is not found.
        let removed = unsafe {
            bindings::devm_remove_action_nowarn(self.dev.as_raw(), Some(Node::run), node.cast())
        } == 0;
        if removed {
            // SAFETY: The action will not run: the node is ours (type invariant).
            drop(unsafe { KBox::from_raw(node) });
            return true;
        }
        // The device is being unbound, or was: the action is pending or ran.
        // SAFETY: The node is live (type invariant).
        let this = unsafe { &*node };
        if this.state.cmpxchg(ARMED, OWNED, Full).is_ok() {
            // INVARIANT: The node belongs to the pending action from now on.
            return true;
        }
        this.done.wait_for_completion();
        // SAFETY: The action finished with the node, which is ours (type invariant).
        drop(unsafe { KBox::from_raw(node) });
        false
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

    /// Arms `action(data)` to run when the device is unbound; fails with `ENODEV` once unbinding
    /// has started (from the bus's remove on), in which case the caller undoes its registration.
    /// Sleeps; not from memory reclaim (a shrinker's callback, say), as arming allocates under the
    /// gate's lock.
    ///
    /// # Safety
    ///
    /// Until [`UnbindFence::disarm`] returns, calling `action(data)` once, from the unbinding of
    /// the device, is sound, and ends every use the registration makes of borrowed data.
    /// `action` does not drop the registration (its drop would wait for the action).
    pub unsafe fn fence(
        &self,
        action: unsafe extern "C" fn(*mut c_void),
        data: *mut c_void,
    ) -> Result<UnbindFence> {
        let node = UnbindFence::node(action, data)?;
        // Held while arming: `close()` returns only once no fence is being armed, so every fence
        // is on the device's list before `devres_release_all()` takes it.
        let open = self.gate.open.lock();
        if !*open {
            drop(open);
            // SAFETY: `node` is from `KBox::into_raw`, and was never registered.
            drop(unsafe { KBox::from_raw(node) });
            return Err(ENODEV);
        }
        // SAFETY: `node` is new and handed over; the caller vouches for `action(data)`.
        unsafe { UnbindFence::arm(self.dev.as_ref(), node) }
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

    static DROP_ACTED: Atomic<i32> = Atomic::new(0);
    static DROP_OUTCOME: Atomic<i32> = Atomic::new(0);

    extern "C" fn drop_action(_: *mut c_void) {
        DROP_ACTED.fetch_add(1, Relaxed);
    }

    /// Owns a fence, and records what disarming it said: 1 "the owner ends the registration", 2
    /// "the action ended it" (and it had), 3 "the action ended it" (but it had not yet).
    struct Owner(Option<UnbindFence>);

    impl Drop for Owner {
        fn drop(&mut self) {
            let outcome = if UnbindFence::disarm_opt(self.0.take()) {
                1
            } else if DROP_ACTED.load(Relaxed) == 1 {
                2
            } else {
                3
            };
            DROP_OUTCOME.store(outcome, Relaxed);
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
        // `devres_release_all()` holds the fence's action on its private list, not yet run.
        devres::register(dev, Owner(Some(fence)), GFP_KERNEL)?;
        drop(reg);
        // The owner claimed the registration (it would have skipped ending it, the action
        // pending, before the fence had a claim); the action, run after, did nothing.
        assert_eq!(DROP_OUTCOME.load(Relaxed), 1);
        assert_eq!(DROP_ACTED.load(Relaxed), 0);
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
        // The fence armed before ran once; disarming it afterwards says so.
        assert_eq!(GATE_ACTED.load(Relaxed), 1);
        assert!(!armed.disarm());
        Ok(())
    }
}
