// SPDX-License-Identifier: GPL-2.0

//! Virtio feature bits and their negotiation.
//!
//! C header: [`include/linux/virtio_config.h`](srctree/include/linux/virtio_config.h)

use super::Device;
use crate::{
    bindings,
    device,
    prelude::*, //
};

/// A virtio feature bit.
///
/// Device-specific features (`VIRTIO_<DEVICE>_F_*`) are offered to the device only when listed
/// in [`Driver::FEATURES`](super::Driver::FEATURES). Transport features (`VIRTIO_F_*`, bits
/// `VIRTIO_TRANSPORT_F_START..VIRTIO_TRANSPORT_F_END`) are negotiated by the transport.
///
/// # Invariants
///
/// The bit is below `VIRTIO_FEATURES_BITS`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(transparent)]
pub struct Feature(u32);

impl Feature {
    /// The feature bit `BIT`. A bit not below `VIRTIO_FEATURES_BITS` does not compile:
    ///
    /// ```
    /// use kernel::virtio::Feature;
    ///
    /// const STATS_VQ: Feature = Feature::new::<1>();
    /// assert_eq!(STATS_VQ.bit(), 1);
    /// ```
    ///
    /// ```ignore
    /// // compile_fail: E0080
    /// use kernel::virtio::Feature;
    ///
    /// static BEYOND: Feature = Feature::new::<{ kernel::bindings::VIRTIO_FEATURES_BITS }>();
    /// ```
    pub const fn new<const BIT: u32>() -> Self {
        const { assert!(BIT < bindings::VIRTIO_FEATURES_BITS) };
        // INVARIANT: Checked above, at compile time.
        Self(BIT)
    }

    /// `VIRTIO_RING_F_INDIRECT_DESC`: descriptors may point at tables of descriptors, which
    /// the ring allocates while adding a buffer.
    pub const RING_INDIRECT_DESC: Self = Self::new::<{ bindings::VIRTIO_RING_F_INDIRECT_DESC }>();

    /// `VIRTIO_F_ACCESS_PLATFORM`: the device sees guest memory through the platform's IOMMU
    /// (DMA addresses, not physical ones).
    pub const ACCESS_PLATFORM: Self = Self::new::<{ bindings::VIRTIO_F_ACCESS_PLATFORM }>();

    /// `VIRTIO_F_VERSION_1`: a modern device, whose rings and buffers are little-endian. A
    /// legacy device uses the guest's byte order.
    pub const VERSION_1: Self = Self::new::<{ bindings::VIRTIO_F_VERSION_1 }>();

    /// The bit number.
    pub const fn bit(self) -> u32 {
        self.0
    }

    const fn is_transport(self) -> bool {
        self.0 >= bindings::VIRTIO_TRANSPORT_F_START && self.0 < bindings::VIRTIO_TRANSPORT_F_END
    }
}

/// Builds the raw table `struct virtio_driver` points at.
///
/// Transport bits are refused: the transport decides those, and listing one would let a driver
/// believe it had a say.
pub(super) fn raw_table(features: &'static [Feature]) -> Result<&'static [u32]> {
    if features.iter().any(|f| f.is_transport()) {
        return Err(EINVAL);
    }
    // SAFETY: `Feature` is a `u32` newtype with the same layout (it holds nothing else), and the
    // slice is `'static`.
    Ok(unsafe { core::slice::from_raw_parts(features.as_ptr().cast::<u32>(), features.len()) })
}

/// Whether the driver bound to `dev` offered `feature`: `virtio_check_driver_offered_feature()`
/// without its `BUG()`.
fn offered(dev: &Device<device::Bound>, feature: Feature) -> bool {
    if feature.is_transport() {
        return true;
    }
    let vdev = dev.as_raw();
    // SAFETY: `vdev` is valid and bound, to a virtio driver as every driver of the virtio bus,
    // so `dev.driver` is embedded in a `struct virtio_driver` whose feature table is valid for
    // its size, and stays so while the binding lasts.
    let table = unsafe {
        let drv = crate::container_of!((*vdev).dev.driver, bindings::virtio_driver, driver);
        if (*drv).feature_table.is_null() {
            return false;
        }
        core::slice::from_raw_parts((*drv).feature_table, (*drv).feature_table_size as usize)
    };
    table.contains(&feature.0)
}

/// Whether `feature` was negotiated with `dev`; a feature the driver never offered is a driver
/// bug, reported and answered `false` (the device cannot have negotiated it).
pub(super) fn negotiated(dev: &Device<device::Bound>, feature: Feature) -> bool {
    if !offered(dev, feature) {
        dev_err!(
            dev.as_ref(),
            "feature bit {} is not in the driver's feature table\n",
            feature.0
        );
        return false;
    }
    dev.test_feature_bit(feature)
}

impl Device<device::Bound> {
    /// Whether `feature` was negotiated, whether or not the driver offers it: for the
    /// abstraction's own checks, such as which configuration fields the device has.
    pub(crate) fn test_feature_bit(&self, feature: Feature) -> bool {
        // SAFETY: `self` is a valid `struct virtio_device` and `feature` is below
        // `VIRTIO_FEATURES_BITS` by the type invariant.
        unsafe { bindings::__virtio_test_bit(self.as_raw(), feature.0) }
    }
}

/// The features negotiated so far, handed to [`Driver::validate`](super::Driver::validate),
/// which may clear some before they become final.
pub struct FeatureSet<'a> {
    dev: &'a Device<device::Core<'a>>,
}

impl<'a> FeatureSet<'a> {
    pub(super) fn new(dev: &'a Device<device::Core<'a>>) -> Self {
        Self { dev }
    }

    /// Returns whether `feature` is negotiated.
    pub fn has(&self, feature: Feature) -> bool {
        negotiated(self.dev, feature)
    }

    /// Withdraws `feature`, e.g. a feature this configuration cannot support.
    pub fn clear(&mut self, feature: Feature) {
        // SAFETY: `dev` is a valid device in its validate callback, where the negotiated
        // features may still change; `feature` is in range by its type invariant.
        unsafe { bindings::__virtio_clear_bit(self.dev.as_raw(), feature.0) };
    }
}
