// SPDX-License-Identifier: GPL-2.0

//! The device configuration space.
//!
//! C header: [`include/linux/virtio_config.h`](srctree/include/linux/virtio_config.h)
//!
//! Drivers describe the layout as a `#[repr(C)]` struct of little-endian fields
//! (`zerocopy::byteorder::little_endian::U32` and friends) and access single fields with
//! [`virtio_cread!`](crate::virtio_cread) and [`virtio_cwrite!`](crate::virtio_cwrite). Both may
//! sleep.

use super::Device;
use crate::{
    bindings,
    device,
    prelude::*, //
};
use core::mem::size_of;
use zerocopy::Immutable;

/// The widest single access to split `len` bytes at `offset` into: transports only implement
/// 1, 2, 4 and 8 byte accesses, naturally aligned.
///
/// Never 0, visibly to the compiler: dividing by it needs no check (objtool does not know
/// `panic_const_div_by_zero` as a function that does not return).
pub(super) const fn access_width(offset: usize, len: usize) -> usize {
    // A power of two divides both exactly when it divides their bitwise or.
    let both = offset | len;
    if both % 8 == 0 {
        8
    } else if both % 4 == 0 {
        4
    } else if both % 2 == 0 {
        2
    } else {
        1
    }
}

impl Device<device::Bound> {
    /// Reads the field of type `F` at `offset` of the configuration layout `C`.
    ///
    /// A field of up to 4 bytes, read in one access, cannot tear and is read once, as
    /// `virtio_cread32()` does; a wider one is read repeatedly until the device's configuration
    /// generation is stable. Use [`virtio_cread!`](crate::virtio_cread).
    #[doc(hidden)]
    #[inline]
    #[track_caller]
    pub fn config_read<C, F: FromBytes + IntoBytes>(
        &self,
        offset: usize,
        _field: fn(&C) -> &F,
    ) -> F {
        build_assert!(offset + size_of::<F>() <= size_of::<C>());
        let mut value = F::new_zeroed();
        // `F: FromBytes` makes any bytes the device returns a valid `F`.
        self.read_config(offset, value.as_mut_bytes());
        value
    }

    /// Writes `value` to the field of type `F` at `offset` of the configuration layout `C`.
    /// Use [`virtio_cwrite!`](crate::virtio_cwrite).
    #[doc(hidden)]
    #[inline]
    #[track_caller]
    pub fn config_write<C, F: IntoBytes + Immutable>(
        &self,
        offset: usize,
        _field: fn(&C) -> &F,
        value: F,
    ) {
        build_assert!(offset + size_of::<F>() <= size_of::<C>());
        self.write_config(offset, value.as_bytes());
    }

    /// [`Self::config_read`]'s work, not generic: the driver's module carries no copy of it.
    #[track_caller]
    fn read_config(&self, offset: usize, buf: &mut [u8]) {
        // Transports may sleep here (vDPA takes a semaphore), as `virtio_cread8()` says.
        crate::task::might_sleep();
        let vdev = self.as_raw();
        let len = buf.len();
        let width = access_width(offset, len);
        // Transports split 8-byte accesses in two: only up to 4 bytes is one access.
        if width == len && len <= 4 {
            // SAFETY: A device's `config` points at its transport's operations while it exists.
            // C calls `get` directly too (`virtio_cread8()`); there is no wrapper to call.
            if let Some(get) = unsafe { (*(*vdev).config).get } {
                // SAFETY: `vdev` is a valid device, and `buf` is valid for writes of `len`
                // bytes, which the caller's layout says lie within the configuration space.
                unsafe { get(vdev, offset as u32, buf.as_mut_ptr().cast(), len as u32) };
            }
            return;
        }
        // SAFETY: As above; `len` is a multiple of `width`, which is never 0.
        unsafe {
            bindings::__virtio_cread_many(
                vdev,
                offset as u32,
                buf.as_mut_ptr().cast(),
                len / width,
                width,
            )
        };
    }

    /// [`Self::config_write`]'s work, not generic.
    #[track_caller]
    fn write_config(&self, offset: usize, bytes: &[u8]) {
        crate::task::might_sleep();
        let vdev = self.as_raw();
        // SAFETY: A device's `config` points at its transport's operations while it exists.
        // C calls `set` directly too (`virtio_cwrite8()`).
        let Some(set) = (unsafe { (*(*vdev).config).set }) else {
            return;
        };
        let width = access_width(offset, bytes.len());
        for (i, chunk) in bytes.chunks(width).enumerate() {
            // SAFETY: `vdev` is a valid `struct virtio_device` with a bound driver, and `chunk`
            // is valid for reads of `chunk.len()` bytes within the driver's layout.
            unsafe {
                set(
                    vdev,
                    (offset + i * width) as u32,
                    chunk.as_ptr().cast(),
                    chunk.len() as u32,
                )
            };
        }
    }
}

/// Reads one field of a virtio device's configuration space.
///
/// `$layout` is the driver's `#[repr(C)]` description of the configuration space; the field's
/// type is what is returned, so little-endian fields come back as `little_endian::U32` etc.
///
/// # Examples
///
/// ```
/// use kernel::{device::Bound, prelude::*, virtio};
/// use zerocopy::byteorder::little_endian::U32;
///
/// #[repr(C)]
/// struct Config {
///     num_pages: U32,
///     actual: U32,
/// }
///
/// fn target(dev: &virtio::Device<Bound>) -> u32 {
///     kernel::virtio_cread!(dev, Config, num_pages).get()
/// }
/// ```
#[macro_export]
macro_rules! virtio_cread {
    ($dev:expr, $layout:ty, $field:ident) => {
        $dev.config_read(::core::mem::offset_of!($layout, $field), |c: &$layout| {
            &c.$field
        })
    };
}

/// Writes one field of a virtio device's configuration space.
///
/// # Examples
///
/// ```
/// use kernel::{device::Bound, prelude::*, virtio};
/// use zerocopy::byteorder::little_endian::U32;
///
/// #[repr(C)]
/// struct Config {
///     num_pages: U32,
///     actual: U32,
/// }
///
/// fn report(dev: &virtio::Device<Bound>, pages: u32) {
///     kernel::virtio_cwrite!(dev, Config, actual, U32::new(pages));
/// }
/// ```
#[macro_export]
macro_rules! virtio_cwrite {
    ($dev:expr, $layout:ty, $field:ident, $value:expr) => {
        $dev.config_write(
            ::core::mem::offset_of!($layout, $field),
            |c: &$layout| &c.$field,
            $value,
        )
    };
}
