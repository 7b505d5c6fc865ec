// SPDX-License-Identifier: GPL-2.0

//! Ring operations on a locked queue: adding buffers, notifying the device, taking used
//! buffers back, and waiting for them.

use super::{
    hint_token,
    info::carries,
    quiesce::{
        kick,
        wait,
        Quiesce,
        Slot, //
    },
    Buffer,
    Inner,
    Queue,
    QueueId, //
};
use crate::{
    alloc::Flags,
    bindings,
    error::to_result,
    mm::pages::Pages,
    prelude::*,
    sync::MutexGuard, //
};
use core::{
    any::TypeId,
    marker::PhantomData,
    ptr::{
        null_mut,
        NonNull, //
    },
};

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
    pub(super) raw: RawGuard<'a>,
    pub(super) _buffer: PhantomData<B>,
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
pub(super) struct RawGuard<'a> {
    pub(super) _ring: Option<MutexGuard<'a, ()>>,
    pub(super) core: &'a Inner<'a>,
    pub(super) queue: &'a Queue,
    pub(super) vq: *mut bindings::virtqueue,
    pub(super) slot: &'a Slot,
    pub(super) quiesce: &'a Quiesce,
}

impl<B: Buffer> QueueGuard<'_, B> {
    #[inline]
    pub(super) fn add(
        &mut self,
        buf: B,
        len: usize,
        out: bool,
        flags: Flags,
    ) -> Result<(), (Error, B)> {
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
    pub(super) unsafe fn used(token: NonNull<c_void>, len: u32) -> Used<B> {
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
    /// Fails with `ENOENT` if the device holds no buffer of this queue, with `EIO` once the queue
    /// is broken and the device reset, and with `ETIMEDOUT` if the device does not answer within
    /// [`UNBIND_GRACE`](super::UNBIND_GRACE) during unbind (see the module documentation). The
    /// buffers the device held stay in the queue until the queues are deleted. Notifications must
    /// be enabled; on a queue created without a callback nothing would end the wait, and this fails
    /// with `EINVAL` (poll it with [`QueueGuard::get_buf`]).
    #[inline]
    pub fn wait_buf(&mut self) -> Result<Used<B>> {
        let (token, len) = self.raw.wait()?;
        // SAFETY: `token` was just taken from the ring.
        Ok(unsafe { Self::used(token, len) })
    }

    /// Hints to the device that the memory of `block` is free, in an in-buffer over the block.
    ///
    /// The block stays the caller's: a hint owns nothing, and the block may be freed while the hint
    /// is still in the ring. That is the protocol of free page hinting (virtio 1.2, 5.5.6.6): the
    /// device only uses a hint to skip the pages while they are not written, and never writes them
    /// itself. A device without `ACCESS_PLATFORM` reaches all of guest memory in any case. Fails
    /// with `EINVAL` on a queue not made [`QueueInfo::with_hints`](super::QueueInfo::with_hints)
    /// and on a ring that maps its buffers for the device (`ACCESS_PLATFORM`, Xen), where a hinted
    /// block stays mapped until the hint comes back; and as [`QueueGuard::add_outbuf`] otherwise.
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

    /// Queue `id`, which shares this queue's ring lock
    /// ([`QueueInfo::locked_with`](super::QueueInfo::locked_with)), for as long as this guard is
    /// not used: one lock taken covers a request that uses both. The queues of a group exist, or
    /// are frozen, together.
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

    /// Gives `buf` to the queue to keep for the driver, and returns the spare it had: a buffer a
    /// request needs, kept under the lock that serialises the request, so that the request takes no
    /// other lock. It stays through [`Virtqueues::freeze`](super::Virtqueues::freeze) and
    /// [`Virtqueues::restore`](super::Virtqueues::restore); the [`Virtqueues`](super::Virtqueues)
    /// drop it.
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
    /// A guard of queue `index`, which must be locked with this one
    /// ([`QueueInfo::locked_with`](super::QueueInfo::locked_with)) and carry the buffer type `id`;
    /// it borrows this guard's lock.
    #[inline]
    pub(super) fn sibling(&mut self, index: usize, id: TypeId) -> Result<RawGuard<'_>> {
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
    pub(super) unsafe fn swap_spare(&mut self, token: *mut c_void) -> *mut c_void {
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
    pub(super) unsafe fn add(
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
    pub(super) fn get(&mut self) -> Option<(NonNull<c_void>, u32)> {
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
    pub(super) fn wait(&mut self) -> Result<(NonNull<c_void>, u32)> {
        if self.queue.info.callback {
            if let Some(used) = self.get() {
                return Ok(used);
            }
        }
        self.wait_slow()
    }

    /// [`RawGuard::wait`] once the device had not answered yet.
    pub(super) fn wait_slow(&mut self) -> Result<(NonNull<c_void>, u32)> {
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
    pub(super) fn add_hint(&mut self, block: &Pages, flags: Flags) -> Result {
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
    pub(super) fn kick(&mut self) -> bool {
        // SAFETY: `self.vq` is live and exclusively ours (type invariant).
        unsafe { kick(self.vq) }
    }

    /// Asks the device for notifications again; returns `false` if buffers were used meanwhile
    /// (poll them, they will not be notified).
    pub(super) fn enable_cb(&mut self) -> bool {
        // SAFETY: `self.vq` is live and exclusively ours (type invariant).
        unsafe { bindings::virtqueue_enable_cb(self.vq) }
    }

    /// Asks the device not to notify this queue (a hint).
    pub(super) fn disable_cb(&mut self) {
        // SAFETY: `self.vq` is live and exclusively ours (type invariant).
        unsafe { bindings::virtqueue_disable_cb(self.vq) }
    }

    /// The number of free descriptors.
    pub(super) fn num_free(&self) -> usize {
        // SAFETY: `self.vq` is live (type invariant); `num_free` only changes under the ring
        // mutex held for this guard.
        unsafe { (*self.vq).num_free as usize }
    }

    /// The size of the ring, in descriptors.
    pub(super) fn size(&self) -> usize {
        // SAFETY: `self.vq` is live (type invariant).
        unsafe { bindings::virtqueue_get_vring_size(self.vq) as usize }
    }

    /// Whether the ring is broken: the device misbehaved or is gone.
    pub(super) fn is_broken(&self) -> bool {
        // SAFETY: `self.vq` is live (type invariant).
        unsafe { bindings::virtqueue_is_broken(self.vq) }
    }
}
