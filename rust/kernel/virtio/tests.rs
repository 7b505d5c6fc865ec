// SPDX-License-Identifier: GPL-2.0

//! KUnit tests for the parts of the virtio abstractions that need no device.

#[macros::kunit_tests(rust_kernel_virtio)]
mod kunit {
    use crate::{
        prelude::*,
        virtio::{
            config::access_width,
            features::raw_table,
            Buffer,
            Feature,
            QueueId,
            QueueInfo, //
        },
    };

    const MUST_TELL_HOST: Feature = Feature::new(0);
    const REPORTING: Feature = Feature::new(5);

    #[test]
    fn feature_bits() {
        assert_eq!(REPORTING.bit(), 5);
        assert_eq!(Feature::RING_INDIRECT_DESC.bit(), 28);
        assert_eq!(Feature::ACCESS_PLATFORM.bit(), 33);
    }

    #[test]
    fn feature_table_refuses_transport_bits() {
        static DEVICE: [Feature; 2] = [MUST_TELL_HOST, REPORTING];
        static WITH_TRANSPORT: [Feature; 2] = [MUST_TELL_HOST, Feature::RING_INDIRECT_DESC];
        static EMPTY: [Feature; 0] = [];

        assert_eq!(raw_table(&DEVICE).ok(), Some(&[0u32, 5][..]));
        assert_eq!(raw_table(&EMPTY).map(|t| t.len()).ok(), Some(0));
        assert!(raw_table(&WITH_TRANSPORT) == Err(EINVAL));
    }

    #[test]
    fn config_accesses_are_natural() {
        // A u32 at 4 is one 4-byte access; a u64 at 4 (packed layouts) is two.
        assert_eq!(access_width(4, 4), 4);
        assert_eq!(access_width(4, 8), 4);
        assert_eq!(access_width(8, 8), 8);
        assert_eq!(access_width(2, 2), 2);
        assert_eq!(access_width(6, 4), 2);
        assert_eq!(access_width(3, 4), 1);
        assert_eq!(access_width(0, 6), 2);
        assert_eq!(access_width(0, 3), 1);
    }

    #[test]
    fn queues_only_hand_out_their_buffer_type() {
        const INFLATE: QueueId<KBox<[u32; 256]>> = QueueId::new(0);
        let pfns = QueueInfo::new(INFLATE, c"inflate");
        assert!(pfns.check_carries::<KBox<[u32; 256]>>().is_ok());
        assert!(pfns.check_carries::<KBox<[u32; 255]>>() == Err(EINVAL));
        assert!(pfns.check_carries::<KBox<u64>>() == Err(EINVAL));
        // Notifications are not part of the type.
        let polled = pfns.without_callback();
        assert!(polled.check_carries::<KBox<[u32; 256]>>().is_ok());
        assert!(QueueInfo::unused().check_carries::<KBox<u64>>() == Err(ENOENT));
    }

    #[test]
    fn queue_ids_name_their_position() {
        const A: QueueId<KBox<u64>> = QueueId::new(0);
        const B: QueueId<KBox<u64>> = QueueId::new(1);
        let (a, b) = (QueueInfo::new(A, c"a"), QueueInfo::new(B, c"b"));
        assert!(QueueInfo::check_list(&[a, b]).is_ok());
        // Queue `B` at position 0 would be locked as `A`.
        assert!(QueueInfo::check_list(&[b, a]) == Err(EINVAL));
        // An unused queue has no id to check.
        assert!(QueueInfo::check_list(&[QueueInfo::unused(), b]).is_ok());
    }

    #[test]
    fn boxed_buffers_round_trip() -> Result {
        let buf = KBox::new([7u32; 16], GFP_KERNEL)?;
        let (ptr, len) = buf.region();
        assert_eq!(len, 64);
        let token = buf.into_raw();
        assert_eq!(token.cast::<u8>(), ptr);
        // SAFETY: `token` comes from `into_raw` of the same type and is not used again.
        let back = unsafe { <KBox<[u32; 16]> as Buffer>::from_raw(token) };
        assert_eq!(back[15], 7);
        Ok(())
    }
}
