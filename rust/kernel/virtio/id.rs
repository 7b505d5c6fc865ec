// SPDX-License-Identifier: GPL-2.0

//! Virtio device ids and id tables.
//!
//! C header: [`include/linux/mod_devicetable.h`](srctree/include/linux/mod_devicetable.h)

use crate::{
    bindings,
    device_id::RawDeviceId, //
};

/// A virtio device id: a device type (`VIRTIO_ID_*`) and a vendor, either of which may be the
/// wildcard [`DeviceId::ANY`].
///
/// `struct virtio_device_id` carries no driver data, so virtio tables have no per-id info.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct DeviceId(bindings::virtio_device_id);

impl DeviceId {
    /// Matches any device type or vendor (`VIRTIO_DEV_ANY_ID`).
    pub const ANY: u32 = bindings::VIRTIO_DEV_ANY_ID;

    /// `VIRTIO_ID_NET`.
    pub const NET: u32 = bindings::VIRTIO_ID_NET;
    /// `VIRTIO_ID_BLOCK`.
    pub const BLOCK: u32 = bindings::VIRTIO_ID_BLOCK;
    /// `VIRTIO_ID_CONSOLE`.
    pub const CONSOLE: u32 = bindings::VIRTIO_ID_CONSOLE;
    /// `VIRTIO_ID_RNG`.
    pub const ENTROPY: u32 = bindings::VIRTIO_ID_RNG;
    /// `VIRTIO_ID_BALLOON`.
    pub const BALLOON: u32 = bindings::VIRTIO_ID_BALLOON;

    /// Matches devices of type `device` from any vendor.
    pub const fn new(device: u32) -> Self {
        Self::with_vendor(device, Self::ANY)
    }

    /// Matches devices of type `device` from `vendor`.
    pub const fn with_vendor(device: u32, vendor: u32) -> Self {
        Self(bindings::virtio_device_id { device, vendor })
    }
}

// SAFETY: `DeviceId` is a `#[repr(transparent)]` wrapper of `virtio_device_id` and does not add
// additional invariants, so it's safe to transmute to `RawType`.
unsafe impl RawDeviceId for DeviceId {
    type RawType = bindings::virtio_device_id;
}

/// The id table of a virtio driver.
pub type IdTable = &'static dyn crate::device_id::IdTable<DeviceId, ()>;

/// Creates a virtio device id table and exports it for module autoloading (`virtio:dNvN`).
///
/// # Examples
///
/// ```
/// use kernel::virtio::DeviceId;
///
/// kernel::virtio_device_table!(BALLOON_TABLE, [DeviceId::new(DeviceId::BALLOON)]);
/// ```
#[macro_export]
macro_rules! virtio_device_table {
    ($table_name:ident, [$($id:expr),* $(,)?]) => {
        $crate::module_device_table!(
            "virtio", $crate::virtio::DeviceId, $table_name, @none, [$($id),*]
        );
    };
}
