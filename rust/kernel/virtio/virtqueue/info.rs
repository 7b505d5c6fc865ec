// SPDX-License-Identifier: GPL-2.0

//! The queues a driver asks for: their positions, names and buffer types.
//!
//! A driver describes each queue with a [`QueueInfo`] and names it everywhere else by a
//! [`QueueId`], whose type parameter is the buffer type the queue carries.

use super::{
    drop_token,
    forget_token,
    Buffer, //
};
use crate::{
    prelude::*,
    str::CStr, //
};
use core::{
    any::TypeId,
    marker::PhantomData, //
};

/// The buffer type of a queue, kept so the buffers can be given back and dropped as what they
/// are.
#[derive(Clone, Copy)]
pub(super) struct BufferType {
    pub(super) id: TypeId,
    pub(super) drop: unsafe fn(*mut c_void),
}

/// Checks that a queue with buffer type `buffer` carries the type `id`: `ENOENT` for an unused
/// queue, `EINVAL` for another type.
pub(super) fn carries(buffer: Option<BufferType>, id: TypeId) -> Result {
    match buffer {
        None => Err(ENOENT),
        Some(t) if t.id == id => Ok(()),
        Some(_) => Err(EINVAL),
    }
}

/// The buffer type of lending queues ([`QueueInfo::lending`]): no value of it exists, since
/// a lending queue carries memory the driver does not own, for the duration of a call.
pub enum Lent {}

/// A queue of a driver's [`Virtqueues`](super::Virtqueues): its position in the list given to
/// [`Virtqueues::new`](super::Virtqueues::new), and the type of the buffers it carries.
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
    pub(super) index: usize,
    pub(super) _buffer: PhantomData<fn() -> B>,
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

    /// The queue's position in the driver's list, as [`Handler::used`](super::Handler::used)
    /// reports it.
    pub const fn index(self) -> usize {
        self.index
    }
}

/// Describes one queue to create: its name, whether the device's notifications for it are
/// wanted, and the [`Buffer`] type it carries.
#[derive(Clone, Copy)]
pub struct QueueInfo {
    /// The position the driver says the queue has; checked by
    /// [`Virtqueues::new`](super::Virtqueues::new).
    pub(super) index: usize,
    pub(super) name: Option<&'static CStr>,
    pub(super) callback: bool,
    pub(super) buffer: Option<BufferType>,
    pub(super) hints: bool,
    /// The position of the queue whose ring lock serialises this one, if not its own.
    pub(super) lock: Option<usize>,
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
    /// [`Virtqueues::lend_and_wait`](super::Virtqueues::lend_and_wait); it carries no [`Buffer`].
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

    /// The same queue, which also carries free page hints
    /// ([`QueueGuard::add_hint`](super::QueueGuard::add_hint)).
    pub const fn with_hints(self) -> Self {
        Self {
            hints: true,
            ..self
        }
    }

    /// The same queue, serialised by the ring lock of queue `other` instead of a lock of its own:
    /// the driver chooses which queues one lock covers. A guard of either queue reaches the other
    /// ([`QueueGuard::sibling`](super::QueueGuard::sibling)), so that a request that uses both
    /// takes one lock, as a C driver's one mutex covers the queues it serialises.
    ///
    /// `other` must be a used queue with a lock of its own, and neither may be a
    /// [`QueueInfo::lending`] queue, whose waits hold the lock where no guard can reach it
    /// ([`Virtqueues::new`](super::Virtqueues::new) fails with `EINVAL` otherwise). As with any
    /// mutex, locking a queue while holding a guard of its group deadlocks: reach it with
    /// [`QueueGuard::sibling`](super::QueueGuard::sibling).
    pub const fn locked_with<C>(self, other: QueueId<C>) -> Self {
        Self {
            lock: Some(other.index),
            ..self
        }
    }

    /// Whether this is a [`QueueInfo::lending`] queue.
    pub(super) fn is_lending(&self) -> bool {
        matches!(self.buffer, Some(t) if t.id == TypeId::of::<Lent>())
    }
}
