// SPDX-License-Identifier: GPL-2.0

//! KUnit tests for the parts of the virtio abstractions that need no device.

#[macros::kunit_tests(rust_kernel_virtio)]
mod kunit {
    use crate::{
        prelude::*,
        sync::{
            atomic::{
                Acquire,
                Atomic,
                Relaxed,
                Release, //
            },
            Arc,
            Completion, //
        },
        time::{
            Delta,
            Instant,
            Monotonic, //
        },
        virtio::{
            balloon,
            config::{
                access_width,
                field_offset, //
            },
            features::raw_table,
            le,
            work::{
                take_published,
                with_published, //
            },
            Buffer,
            Feature,
            Lent,
            QueueId,
            QueueInfo, //
        },
        workqueue::{
            self,
            new_scoped_work,
            ScopedHandler,
            WorkQueue, //
        },
    };

    const MUST_TELL_HOST: Feature = Feature::new::<0>();
    const REPORTING: Feature = Feature::new::<5>();

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
    fn config_fields_are_found_where_they_are() {
        static ELSEWHERE: le::U32 = le::U32::ZERO;
        assert_eq!(field_offset(|c: &balloon::Config| &c.num_pages), Some(0));
        assert_eq!(field_offset(|c: &balloon::Config| &c.actual), Some(4));
        // An accessor that returns anything but a field of the layout reaches nothing.
        assert_eq!(field_offset(|_: &balloon::Config| &ELSEWHERE), None);
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
    fn queues_share_the_lock_of_a_queue_with_its_own() -> Result {
        const A: QueueId<KBox<u64>> = QueueId::new(0);
        const B: QueueId<KBox<u64>> = QueueId::new(1);
        const C: QueueId<KBox<u32>> = QueueId::new(2);
        let (a, b, c) = (
            QueueInfo::new(A, c"a"),
            QueueInfo::new(B, c"b"),
            QueueInfo::new(C, c"c"),
        );
        assert_eq!(QueueInfo::check_rings(&[a, b, c])?[..], [0, 1, 2]);
        assert_eq!(
            QueueInfo::check_rings(&[a, b.locked_with(A), c.locked_with(A)])?[..],
            [0, 0, 0]
        );
        assert_eq!(
            QueueInfo::check_rings(&[a.locked_with(B), b, c])?[..],
            [1, 1, 2]
        );
        // One lock per group: a guard never takes two, so no lock order to get wrong.
        assert!(QueueInfo::check_rings(&[a, b.locked_with(A), c.locked_with(B)]).is_err());
        // A queue that does not exist, or is unused, has no lock to share.
        let nowhere = QueueId::<KBox<u64>>::new(7);
        assert!(QueueInfo::check_rings(&[a, b.locked_with(nowhere)]).is_err());
        assert!(QueueInfo::check_rings(&[QueueInfo::unused(), b.locked_with(A)]).is_err());
        // An unused queue locks nothing, in either order of the chain.
        let unused = [a, b.locked_with(A).only_if(false)];
        assert_eq!(QueueInfo::check_rings(&unused)?[..], [0, 1]);
        let unused = [a, QueueInfo::unused().locked_with(A)];
        assert_eq!(QueueInfo::check_rings(&unused)?[..], [0, 1]);
        // A lending queue waits under its lock, where no guard of its group could reach it.
        const L: QueueId<Lent> = QueueId::new(1);
        let lending = QueueInfo::lending(L, c"l");
        assert!(QueueInfo::check_rings(&[a, lending.locked_with(A)]).is_err());
        assert!(QueueInfo::check_rings(&[a.locked_with(L), lending]).is_err());
        Ok(())
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

    /// A reader of a published pointer that stays in its critical section while the pointer is
    /// taken, as a leaked registration's `schedule_work()` might between its load and its
    /// `queue_work_on()`.
    #[pin_data]
    struct SlowReader {
        published: Atomic<*mut c_void>,
        #[pin]
        entered: Completion,
        /// Set by the test just before it takes the pointer.
        taking: Atomic<bool>,
        /// Whether the reader saw `taking` while in its critical section: only then did the two
        /// run at once (the test thread may have had to wait for the reader's CPU, as an RCU
        /// reader is not preempted with `PREEMPT_RCU=n`).
        overlapped: Atomic<bool>,
        /// What the reader found behind the pointer; 0 if it found no pointer.
        seen: Atomic<u64>,
        /// Set by the reader as the last thing in its critical section.
        left: Atomic<bool>,
    }

    /// Spins for up to `ms` milliseconds, or until `until` returns true; returns whether it did.
    fn spin(ms: i64, until: impl Fn() -> bool) -> bool {
        let start = Instant::<Monotonic>::now();
        while start.elapsed() < Delta::from_millis(ms) {
            if until() {
                return true;
            }
            crate::processor::cpu_relax();
        }
        until()
    }

    impl ScopedHandler for SlowReader {
        fn run(&self) {
            let seen = with_published(&self.published, |ptr| {
                self.entered.complete_all();
                // Busy, as a read-side critical section must not sleep: until the test is
                // taking the pointer, then long enough for taking it to return were it not
                // waiting for this reader.
                let overlapped = spin(1000, || self.taking.load(Acquire));
                self.overlapped.store(overlapped, Relaxed);
                spin(200, || false);
                // SAFETY: `with_published` keeps what `ptr` points at, a `u64`, allocated.
                let v = unsafe { ptr.cast::<u64>().read_volatile() };
                self.left.store(true, Release);
                v
            });
            self.seen.store(seen.unwrap_or(0), Relaxed);
            if seen.is_none() {
                self.entered.complete_all();
            }
        }
    }

    /// One race of a reader against taking the pointer it reads; returns whether the two
    /// overlapped.
    fn race_once() -> Result<bool> {
        const CANARY: u64 = 0x5a5a_f00d;
        let data = KBox::into_raw(KBox::new(CANARY, GFP_KERNEL)?);
        let reader = Arc::pin_init(
            pin_init!(SlowReader {
                published: Atomic::new(data.cast()),
                entered <- Completion::new(),
                taking: Atomic::new(false),
                overlapped: Atomic::new(false),
                seen: Atomic::new(0),
                left: Atomic::new(false),
            }),
            GFP_KERNEL,
        )?;
        // Unbound: a per-CPU workqueue would report the busy reader as hogging its CPU.
        let queue = WorkQueue::System(workqueue::system_unbound());
        let work = KBox::pin_init(new_scoped_work!(reader.clone(), queue), GFP_KERNEL)?;
        assert!(work.queue());
        reader.entered.wait_for_completion();

        // The reader is inside its critical section: taking the pointer waits until it left.
        reader.taking.store(true, Release);
        let taken = take_published(&reader.published);
        assert!(reader.left.load(Acquire));
        assert_eq!(taken, data.cast());
        // SAFETY: `data` comes from `KBox::into_raw`, and nobody reads it any more.
        drop(unsafe { KBox::from_raw(data) });
        // Waits for the reader to finish.
        drop(work);
        assert_eq!(reader.seen.load(Relaxed), CANARY);
        // Once taken, a reader finds nothing.
        assert!(with_published(&reader.published, |_| ()).is_none());
        Ok(reader.overlapped.load(Relaxed))
    }

    /// The pair `Device::schedule_work()` and remove use (`with_published`, `take_published`):
    /// taking the pointer returns only once a reader that loaded it is done with it.
    #[test]
    fn taking_a_published_pointer_waits_for_its_readers() -> Result {
        // The scheduler may run the test thread on the reader's CPU, after the reader: the case
        // proves nothing then, and is run again.
        let mut overlapped = false;
        for _ in 0..5 {
            if race_once()? {
                overlapped = true;
                break;
            }
        }
        // Fails if the reader never ran while the pointer was being taken.
        assert!(overlapped);
        Ok(())
    }
}
