// SPDX-License-Identifier: GPL-2.0

//! The virtio memory balloon device.
//!
//! C header: [`include/uapi/linux/virtio_balloon.h`](srctree/include/uapi/linux/virtio_balloon.h)

use super::{
    le,
    ConfigSpace,
    Device,
    DeviceId,
    Feature, //
};
use crate::device::Bound;
use core::mem::{
    offset_of,
    size_of, //
};

/// The configuration space of a virtio memory balloon (`struct virtio_balloon_config`), in 4 KiB
/// frames. Its fields are little-endian, on legacy devices too (the spec says so for the
/// balloon).
///
/// `free_page_hint_cmd_id` exists only with `VIRTIO_BALLOON_F_FREE_PAGE_HINT` (bit 3), and
/// `poison_val` only with `VIRTIO_BALLOON_F_PAGE_POISON` (bit 4). The accessors follow the
/// device's size: `poison_val` and, without either feature, `free_page_hint_cmd_id` are not
/// accessed (reads give zeroes); with `PAGE_POISON` alone `free_page_hint_cmd_id` is within the
/// space but means nothing.
#[repr(C)]
pub struct Config {
    /// The number of frames the host wants in the balloon.
    pub num_pages: le::U32,
    /// The number of frames in the balloon, written by the driver.
    pub actual: le::U32,
    /// The command id of a free page hinting round (`free_page_report_cmd_id` too).
    pub free_page_hint_cmd_id: le::U32,
    /// What freed pages hold, with page poisoning.
    pub poison_val: le::U32,
}

const _: () = {
    assert!(offset_of!(Config, num_pages) == 0 && offset_of!(Config, actual) == 4);
    assert!(offset_of!(Config, free_page_hint_cmd_id) == 8);
    assert!(offset_of!(Config, poison_val) == 12 && size_of::<Config>() == 16);
};

/// `VIRTIO_BALLOON_F_FREE_PAGE_HINT` and `VIRTIO_BALLOON_F_PAGE_POISON`.
const F_FREE_PAGE_HINT: Feature = Feature::new(3);
const F_PAGE_POISON: Feature = Feature::new(4);

// The spec has `free_page_hint_cmd_id` only with `F_FREE_PAGE_HINT` negotiated and `poison_val`
// only with `F_PAGE_POISON`, whose space then has all 16 bytes (QEMU sizes it by the offered
// features, a superset).
// SAFETY: `#[repr(C)]` with the fields of `struct virtio_balloon_config` at its offsets (asserted
// above; the union is one 4-byte field); `size` never exceeds what the features provide (above).
unsafe impl ConfigSpace for Config {
    const DEVICE: u32 = DeviceId::BALLOON;

    fn size(dev: &Device<Bound>) -> usize {
        if dev.test_feature_bit(F_PAGE_POISON) {
            size_of::<Config>()
        } else if dev.test_feature_bit(F_FREE_PAGE_HINT) {
            offset_of!(Config, poison_val)
        } else {
            offset_of!(Config, free_page_hint_cmd_id)
        }
    }
}
