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
#[cfg(CONFIG_PAGE_REPORTING)]
use crate::mm::{
    page_reporting::ContentsKept,
    poison, //
};
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
///
/// `poison_val` is written by [`tell_poison`] only: the proof that page reporting needs rests on
/// the value the device was told, which a driver therefore cannot change.
///
/// ```
/// use kernel::{device::Bound, virtio::{balloon::Config, le, Device}};
///
/// fn report_size(dev: &Device<Bound>, frames: u32) {
///     kernel::virtio_cwrite!(dev, Config, actual, le::U32::new(frames));
/// }
/// # let _ = report_size;
/// ```
///
/// ```ignore
/// // compile_fail: E0616
/// use kernel::{device::Bound, virtio::{balloon::Config, le, Device}};
///
/// fn lie(dev: &Device<Bound>) {
///     kernel::virtio_cwrite!(dev, Config, poison_val, le::U32::new(0x5a5a_5a5a));
/// }
/// ```
#[repr(C)]
pub struct Config {
    /// The number of frames the host wants in the balloon.
    pub num_pages: le::U32,
    /// The number of frames in the balloon, written by the driver.
    pub actual: le::U32,
    /// The command id of a free page hinting round (`free_page_report_cmd_id` too).
    pub free_page_hint_cmd_id: le::U32,
    /// What freed pages hold, with page poisoning or init-on-free.
    pub(crate) poison_val: le::U32,
}

const _: () = {
    assert!(offset_of!(Config, num_pages) == 0 && offset_of!(Config, actual) == 4);
    assert!(offset_of!(Config, free_page_hint_cmd_id) == 8);
    assert!(offset_of!(Config, poison_val) == 12 && size_of::<Config>() == 16);
};

/// `VIRTIO_BALLOON_F_MUST_TELL_HOST`: deflated pages may only be reused after the host was told.
pub const F_MUST_TELL_HOST: Feature = Feature::new::<0>();
/// `VIRTIO_BALLOON_F_STATS_VQ`: the host polls memory statistics through a third queue.
pub const F_STATS_VQ: Feature = Feature::new::<1>();
/// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`: ballooned pages stay guest memory and are given back when
/// the guest runs out.
pub const F_DEFLATE_ON_OOM: Feature = Feature::new::<2>();
/// `VIRTIO_BALLOON_F_FREE_PAGE_HINT`: while migrating the guest, the host asks for free memory it
/// need not copy (`free_page_hint_cmd_id`).
pub const F_FREE_PAGE_HINT: Feature = Feature::new::<3>();
/// `VIRTIO_BALLOON_F_PAGE_POISON`: the host learns what freed pages contain (`poison_val`).
pub const F_PAGE_POISON: Feature = Feature::new::<4>();
/// `VIRTIO_BALLOON_F_REPORTING`: free pages are reported, through a fifth queue, for the host
/// to discard.
pub const F_REPORTING: Feature = Feature::new::<5>();

// The spec has `free_page_hint_cmd_id` only with `F_FREE_PAGE_HINT` negotiated and `poison_val`
// only with `F_PAGE_POISON`, whose space then has all 16 bytes (QEMU sizes it by the offered
// features, a superset).
// SAFETY: `#[repr(C)]` with the fields of `struct virtio_balloon_config` at its offsets (asserted
// above; the union is one 4-byte field); `size` never exceeds what the features provide (above);
// its fields are integers, for which all zeroes are valid.
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

/// Tells the device what freed pages hold (`poison_val`: zeroes with init-on-free, else the
/// [`POISON`](poison::POISON) pattern), as the driver must once `VIRTIO_BALLOON_F_PAGE_POISON` is
/// negotiated, and returns the proof that page reporting needs for it. `None`, with nothing
/// written, for a device without the feature or of another type.
///
/// With the feature a device keeps that value in the pages reported to it (virtio 1.2, Memory
/// Balloon Device, Device Operation, "Page Poison"); without it, as C's `virtballoon_validate()`
/// says, reporting "could potentially change the contents of our free pages".
///
/// A reset sets `poison_val` back to 0 on QEMU: call this again after restore. A device that
/// then keeps 0 still keeps what init-on-free expects; only page poisoning's pattern, whose check
/// is a diagnostic, is lost until it is told again (as with C's driver, which does not tell it
/// again).
#[cfg(CONFIG_PAGE_REPORTING)]
pub fn tell_poison(dev: &Device<Bound>) -> Option<ContentsKept<'_>> {
    if dev.device_type() != DeviceId::BALLOON || !dev.test_feature_bit(F_PAGE_POISON) {
        return None;
    }
    // Nothing to tell: the allocator expects nothing of a free page.
    if !poison::init_on_free() && !poison::poisoning_enabled() {
        return ContentsKept::not_needed();
    }
    let byte = if poison::init_on_free() {
        0
    } else {
        poison::POISON
    };
    crate::virtio_cwrite!(
        dev,
        Config,
        poison_val,
        le::U32::new(u32::from_ne_bytes([byte; 4]))
    );
    // SAFETY: The device, a balloon with `VIRTIO_BALLOON_F_PAGE_POISON` negotiated, was just
    // told what free pages hold, which it keeps in reported pages (above).
    Some(unsafe { ContentsKept::told(dev.as_ref()) })
}
