// SPDX-License-Identifier: GPL-2.0

//! The device configuration space.
//!
//! C header: [`include/linux/virtio_config.h`](srctree/include/linux/virtio_config.h)
//!
//! The layout of a device type's configuration space is a [`ConfigSpace`] type of the kernel
//! crate, such as [`balloon::Config`](super::balloon::Config), whose fields have the byte order
//! the specification gives them (`zerocopy::byteorder::little_endian::U32` and friends).
//! Drivers access single fields with [`virtio_cread!`](crate::virtio_cread) and
//! [`virtio_cwrite!`](crate::virtio_cwrite). Both may sleep.
//!
//! A driver cannot describe the layout itself in safe code: an offset past the device's
//! configuration space reaches whatever the transport maps there (on virtio-mmio, the registers
//! of the next device, whose queue addresses would point its DMA at guest memory). virtio-mmio
//! and legacy PCI check nothing, modern PCI `BUG()`s, vDPA refuses. For the same reason a field
//! that the negotiated features do not provide, or of another device type's layout, is not
//! accessed: reads give zeroes, writes do nothing, and the log says so once.

use super::Device;
use crate::{
    bindings,
    device,
    prelude::*,
    sync::atomic::{
        Atomic,
        Relaxed, //
    }, //
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

/// The layout of the configuration space of a virtio device type.
///
/// # Safety
///
/// `Self` is `#[repr(C)]`, and each of its fields has the offset and the size that the virtio
/// specification gives it in the configuration space of devices of type [`Self::DEVICE`]; for
/// such a device, the first [`ConfigSpace::size`] bytes of `Self` lie within its configuration
/// space as the specification has it. (A device whose transport maps less than that is not
/// guarded against, as in C: modern PCI then `BUG()`s.) All zeroes are a valid `Self`.
pub unsafe trait ConfigSpace: Sized {
    /// The device type (`VIRTIO_ID_*`, see [`DeviceId`](super::DeviceId)).
    const DEVICE: u32;

    /// How much of the layout `dev`, a device of type [`Self::DEVICE`], has given its negotiated
    /// features, at most `size_of::<Self>()`: fields that exist only with a feature lie past the
    /// end of a device's configuration space without it. Called only for such a device.
    fn size(dev: &Device<device::Bound>) -> usize;
}

/// Logs a configuration access refused by [`Device::has_field`]: once, as it comes from a driver
/// bug that a loop would repeat.
static REFUSED: Atomic<bool> = Atomic::new(false);

/// The offset in `C` of the field that `field` returns, found by calling it on a zeroed `C`: the
/// offset comes from the field, never from the caller, so only the fields a driver can name are
/// reachable (not a private one, such as the balloon's `poison_val`). `None` if the reference
/// does not lie within the `C` it was given (a static, say).
#[inline]
pub(super) fn field_offset<C: ConfigSpace, F>(field: fn(&C) -> &F) -> Option<usize> {
    let layout = core::mem::MaybeUninit::<C>::zeroed();
    // SAFETY: All zeroes are a valid `C` (`ConfigSpace` safety requirements).
    let layout = unsafe { layout.assume_init_ref() };
    let base = core::ptr::from_ref(layout).addr();
    let offset = core::ptr::from_ref(field(layout))
        .addr()
        .checked_sub(base)?;
    (offset <= size_of::<C>() && size_of::<F>() <= size_of::<C>() - offset).then_some(offset)
}

impl Device<device::Bound> {
    /// Reads the field of type `F` of the configuration layout `C` that `field` returns.
    ///
    /// A field of up to 4 bytes is read once, as `virtio_cread32()` does (in one access on
    /// modern transports; legacy PCI and virtio-mmio version 1 read it byte by byte, as for C); a
    /// wider one is read repeatedly until the device's configuration generation is stable. Use
    /// [`virtio_cread!`](crate::virtio_cread).
    #[doc(hidden)]
    #[inline]
    #[track_caller]
    pub fn config_read<C: ConfigSpace, F: FromBytes + IntoBytes>(&self, field: fn(&C) -> &F) -> F {
        let mut value = F::new_zeroed();
        // Not within the layout: refused as past the device's size.
        let offset = field_offset(field).unwrap_or(usize::MAX);
        // `F: FromBytes` makes any bytes the device returns a valid `F`.
        self.read_config(self.layout_size::<C>(), offset, value.as_mut_bytes());
        value
    }

    /// Writes `value` to the field of type `F` of the configuration layout `C` that `field`
    /// returns.
    /// Use [`virtio_cwrite!`](crate::virtio_cwrite).
    #[doc(hidden)]
    #[inline]
    #[track_caller]
    pub fn config_write<C: ConfigSpace, F: IntoBytes + Immutable>(
        &self,
        field: fn(&C) -> &F,
        value: F,
    ) {
        let offset = field_offset(field).unwrap_or(usize::MAX);
        self.write_config(self.layout_size::<C>(), offset, value.as_bytes());
    }

    /// How much of the layout `C` this device has: none if it is of another type.
    #[inline]
    fn layout_size<C: ConfigSpace>(&self) -> usize {
        if self.device_type() == C::DEVICE {
            C::size(self).min(size_of::<C>())
        } else {
            0
        }
    }

    /// Whether this device has the `len` bytes at `offset` of a layout of which it has `size`
    /// (see [`ConfigSpace`]); a driver that asks for a field its device does not have is told
    /// so in the log, once.
    #[track_caller]
    fn has_field(&self, size: usize, offset: usize, len: usize) -> bool {
        if offset <= size && len <= size - offset {
            return true;
        }
        if !REFUSED.xchg(true, Relaxed) {
            dev_err!(
                self.as_ref(),
                "configuration field at {} not in the layout of this device type and features: \
                 not accessed\n",
                offset
            );
        }
        false
    }

    /// [`Self::config_read`]'s work, not generic: the driver's module carries no copy of it.
    /// Reads zeroes for a field the device does not have (see [`Self::has_field`]).
    #[track_caller]
    fn read_config(&self, size: usize, offset: usize, buf: &mut [u8]) {
        // Transports may sleep here (vDPA takes a semaphore), as `virtio_cread8()` says.
        crate::task::might_sleep();
        if !self.has_field(size, offset, buf.len()) {
            buf.fill(0);
            return;
        }
        let vdev = self.as_raw();
        let len = buf.len();
        let width = access_width(offset, len);
        // Transports split 8-byte accesses in two: only up to 4 bytes is one access.
        if width == len && len <= 4 {
            // SAFETY: A device's `config` points at its transport's operations while it exists.
            // C calls `get` directly too (`virtio_cread8()`); there is no wrapper to call.
            if let Some(get) = unsafe { (*(*vdev).config).get } {
                // SAFETY: `vdev` is a valid device, and `buf` is valid for writes of `len`
                // bytes, which lie within its configuration space as the specification has it:
                // within the size a `ConfigSpace` layout of its type gives for it (checked).
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

    /// [`Self::config_write`]'s work, not generic. Writes nothing to a field the device does
    /// not have (see [`Self::has_field`]).
    #[track_caller]
    fn write_config(&self, size: usize, offset: usize, bytes: &[u8]) {
        crate::task::might_sleep();
        if !self.has_field(size, offset, bytes.len()) {
            return;
        }
        let vdev = self.as_raw();
        // SAFETY: A device's `config` points at its transport's operations while it exists.
        // C calls `set` directly too (`virtio_cwrite8()`).
        let Some(set) = (unsafe { (*(*vdev).config).set }) else {
            return;
        };
        let width = access_width(offset, bytes.len());
        for (i, chunk) in bytes.chunks(width).enumerate() {
            // SAFETY: `vdev` is a valid `struct virtio_device` with a bound driver, and `chunk`
            // is valid for reads of `chunk.len()` bytes, which lie within its configuration
            // space: part of a field checked as for reads.
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
/// `$layout` is the [`ConfigSpace`](crate::virtio::ConfigSpace) of the device type; the field's
/// type is what is returned, so little-endian fields come back as `little_endian::U32` etc.
///
/// # Examples
///
/// ```
/// use kernel::{device::Bound, prelude::*, virtio};
///
/// fn target(dev: &virtio::Device<Bound>) -> u32 {
///     kernel::virtio_cread!(dev, virtio::balloon::Config, num_pages).get()
/// }
/// ```
///
/// A layout of the driver's own would let it reach past the configuration space: it does not
/// compile (`tests/test_compile_fail.py` checks that):
///
/// ```ignore
/// // compile_fail: E0277
/// use kernel::{device::Bound, prelude::*, virtio};
/// use zerocopy::byteorder::little_endian::U32;
///
/// #[repr(C)]
/// struct Mine {
///     padding: [u8; 0x170],
///     next_device_status: U32,
/// }
///
/// fn poke(dev: &virtio::Device<Bound>) {
///     kernel::virtio_cwrite!(dev, Mine, next_device_status, U32::new(0));
/// }
/// ```
#[macro_export]
macro_rules! virtio_cread {
    ($dev:expr, $layout:ty, $field:ident) => {
        $dev.config_read(|c: &$layout| &c.$field)
    };
}

/// Writes one field of a virtio device's configuration space, whose layout `$layout` is the
/// device type's [`ConfigSpace`](crate::virtio::ConfigSpace).
///
/// # Examples
///
/// ```
/// use kernel::{device::Bound, prelude::*, virtio};
///
/// fn report(dev: &virtio::Device<Bound>, frames: u32) {
///     kernel::virtio_cwrite!(dev, virtio::balloon::Config, actual, virtio::le::U32::new(frames));
/// }
/// ```
#[macro_export]
macro_rules! virtio_cwrite {
    ($dev:expr, $layout:ty, $field:ident, $value:expr) => {
        $dev.config_write(|c: &$layout| &c.$field, $value)
    };
}
