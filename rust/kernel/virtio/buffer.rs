// SPDX-License-Identifier: GPL-2.0

//! Buffers a driver lends to its device through a virtqueue.
//!
//! C header: [`include/linux/scatterlist.h`](srctree/include/linux/scatterlist.h)

use crate::prelude::*;
use core::mem::size_of;

/// Owned memory that can be added to a virtqueue.
///
/// Adding a buffer to a queue moves it into the queue: while the device holds it, no Rust code
/// can reach its memory. The queue gives it back, as the same value, when the device is done
/// with it or when the queue is torn down.
///
/// # Safety
///
/// Implementers guarantee that:
/// - [`Buffer::region`] describes memory in the kernel's linear map (so a scatterlist can
///   point at it), valid for `len` bytes, which stays valid and is accessed by nobody else
///   while the value exists only as the pointer returned by [`Buffer::into_raw`];
/// - any bytes the device writes into that memory leave a valid value;
/// - [`Buffer::into_raw`] returns a non-null pointer, which [`Buffer::from_raw`] turns back into
///   the value.
pub unsafe trait Buffer: Send + Sized + 'static {
    /// The start and length of the buffer's memory.
    fn region(&self) -> (*mut u8, usize);

    /// Gives up ownership; the result is the token the queue tracks the buffer by.
    fn into_raw(self) -> *mut c_void;

    /// Takes ownership back from a token.
    ///
    /// # Safety
    ///
    /// `ptr` was returned by [`Buffer::into_raw`] of this type and is not used again.
    unsafe fn from_raw(ptr: *mut c_void) -> Self;
}

// `T` is not zero-sized (checked in `region`), so the box owns `size_of::<T>()` bytes.
// SAFETY: `KBox` memory comes from kmalloc (the linear map) and does not move with the box;
// `T: FromBytes` makes any bytes a valid `T`; `KBox::into_raw`/`from_raw` round-trip, non-null.
unsafe impl<T: FromBytes + IntoBytes + Send + 'static> Buffer for KBox<T> {
    fn region(&self) -> (*mut u8, usize) {
        // A zero-sized `T` has no memory to point a scatterlist at.
        build_assert!(size_of::<T>() != 0);
        (
            core::ptr::from_ref::<T>(self).cast_mut().cast(),
            size_of::<T>(),
        )
    }

    fn into_raw(self) -> *mut c_void {
        KBox::into_raw(self).cast()
    }

    unsafe fn from_raw(ptr: *mut c_void) -> Self {
        // SAFETY: By the safety requirements of this function, `ptr` comes from `into_raw` above.
        unsafe { KBox::from_raw(ptr.cast()) }
    }
}
