// SPDX-License-Identifier: GPL-2.0

//! KUnit tests for the balloon wrapper.

#[macros::kunit_tests(rust_kernel_balloon)]
mod kunit {
    use crate::{
        balloon::{
            page::{
                frames_4k_with_shift,
                pfn_of, //
            },
            Balloon,
            BalloonPage,
            ManagedPages,
            MigrateMode,
            Migration,
            MigrationHandler,
            NewPage,
            OldPage,
            PageList,
            Pfn, //
        },
        bindings,
        device::{
            Bound,
            Device, //
        },
        devres::{
            Binding,
            Gate, //
        },
        faux,
        mm::pages::lru,
        prelude::*,
        sync::atomic::{
            Atomic,
            Relaxed, //
        }, //
    };
    use core::ptr::NonNull;
    use pin_init::stack_pin_init;

    /// Answers every migration with a set outcome and remembers the last pair of pages.
    struct Scripted {
        outcome: Atomic<u32>,
        calls: Atomic<u32>,
        last_new: Atomic<usize>,
        last_old: Atomic<usize>,
    }

    const OUTCOMES: [Migration; 4] = [
        Migration::Migrated,
        Migration::Deflated,
        Migration::Busy,
        Migration::Failed,
    ];

    impl Scripted {
        fn new() -> Self {
            Self {
                outcome: Atomic::new(0),
                calls: Atomic::new(0),
                last_new: Atomic::new(0),
                last_old: Atomic::new(0),
            }
        }

        fn answer(&self, outcome: Migration) {
            let i = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
            self.outcome.store(i as u32, Relaxed);
        }
    }

    impl MigrationHandler for Scripted {
        fn migrate(&self, new: &NewPage<'_>, old: &OldPage<'_>, _mode: MigrateMode) -> Migration {
            self.calls.add(1, Relaxed);
            self.last_new.store(new.pfn().get(), Relaxed);
            self.last_old.store(old.pfn().get(), Relaxed);
            OUTCOMES[self.outcome.load(Relaxed) as usize]
        }
    }

    fn balloon() -> Result<Pin<KBox<Balloon<Scripted>>>> {
        KBox::pin_init(
            Balloon::new(ManagedPages::Adjust, Scripted::new()),
            GFP_KERNEL,
        )
    }

    #[test]
    fn enqueue_dequeue_round_trip() -> Result {
        let b = balloon()?;
        let page = BalloonPage::alloc().ok_or(ENOMEM)?;
        let pfn = page.pfn();
        b.enqueue(page);
        assert_eq!(b.pages(), 1);
        assert_eq!(b.isolated(), 0);
        let page = b.dequeue().ok_or(EINVAL)?;
        assert_eq!(page.pfn(), pfn);
        assert_eq!(b.pages(), 0);
        Ok(())
    }

    #[test]
    fn dequeue_from_empty_balloon_is_none() -> Result {
        let b = balloon()?;
        assert!(b.dequeue().is_none());
        stack_pin_init!(let list = PageList::new());
        assert_eq!(b.dequeue_list(list.as_mut(), 8), 0);
        assert!(list.is_empty());
        Ok(())
    }

    #[test]
    fn list_round_trip_honours_count() -> Result {
        let b = balloon()?;
        stack_pin_init!(let list = PageList::new());
        for _ in 0..8 {
            list.as_mut().push(BalloonPage::alloc().ok_or(ENOMEM)?);
        }
        let mut pfns = KVec::new();
        for pfn in list.pfns() {
            pfns.push(pfn, GFP_KERNEL)?;
        }
        assert_eq!(b.enqueue_list(list.as_mut()), 8);
        assert!(list.is_empty());
        assert_eq!(b.pages(), 8);

        assert_eq!(b.dequeue_list(list.as_mut(), 3), 3);
        assert_eq!((list.len(), b.pages()), (3, 5));
        assert_eq!(b.dequeue_list(list.as_mut(), 100), 5);
        assert_eq!((list.len(), b.pages()), (8, 0));
        // Same pages back, whatever the order. Not sorted: objtool does not know the sort's
        // panic on a bad `Ord` as a function that does not return, and warns.
        let mut back = KVec::new();
        for pfn in list.pfns() {
            back.push(pfn, GFP_KERNEL)?;
        }
        assert_eq!(pfns.len(), back.len());
        assert!(pfns
            .iter()
            .all(|p| back.iter().filter(|&q| q == p).count() == 1));
        Ok(())
    }

    #[test]
    fn dropping_a_balloon_returns_its_pages() -> Result {
        let b = balloon()?;
        for _ in 0..4 {
            b.enqueue(BalloonPage::alloc().ok_or(ENOMEM)?);
        }
        assert_eq!(b.pages(), 4);
        // Frees the four pages (and says so); a leak or double free shows up under
        // KASAN/DEBUG_VM, which the test kernel has.
        drop(b);
        Ok(())
    }

    /// A leaked balloon is emptied at unbind by its fence, and takes no page afterwards: a page
    /// that another leaked part of the driver enqueued then would lead compaction to a handler
    /// whose borrows ended.
    #[test]
    fn a_balloon_emptied_at_unbind_takes_no_page() -> Result {
        let reg = faux::Registration::new(c"rust-balloon-unbind", None)?;
        let dev: &Device<Bound> = reg.as_ref().as_ref();
        // SAFETY: The first devres action of the faux device; nothing uses the gate once the
        // device is unbound (dropped below).
        let gate = unsafe { Gate::new(dev) }?;
        // SAFETY: The handler borrows nothing, and the gate is closed before `reg` is dropped.
        let binding = unsafe { Binding::new(dev, gate) };
        let b = KBox::pin_init(
            Balloon::new_for(binding, ManagedPages::Keep, ()),
            GFP_KERNEL,
        )?;
        b.enqueue(BalloonPage::alloc().ok_or(ENOMEM)?);
        // As the bus does at the end of unbind: the balloon's fence empties it.
        gate.close();
        assert_eq!(b.pages(), 0);
        b.enqueue(BalloonPage::alloc().ok_or(ENOMEM)?);
        assert_eq!(b.pages(), 0);
        stack_pin_init!(let list = PageList::new());
        list.as_mut().push(BalloonPage::alloc().ok_or(ENOMEM)?);
        assert_eq!(b.enqueue_list(list.as_mut()), 0);
        assert_eq!((list.len(), b.pages()), (1, 0));
        drop(b);
        drop(reg);
        Ok(())
    }

    #[test]
    fn pfn_in_4k_frames() {
        // 4 KiB pages: one frame per page, same number.
        assert_eq!(frames_4k_with_shift(0x1234, 12), 0x1234..0x1235);
        // 64 KiB pages (arm64, ppc64): 16 consecutive frames.
        assert_eq!(frames_4k_with_shift(0x10, 16), 0x100..0x110);
        assert_eq!(frames_4k_with_shift(1, 16).count(), 16);
        // 16 KiB pages, and a PFN whose 4 KiB number needs more than 32 bits.
        assert_eq!(frames_4k_with_shift(1 << 31, 14).start, 1u64 << 33);
        assert_eq!(
            Pfn::new(7).frames_4k().count(),
            crate::balloon::FRAMES_4K_PER_PAGE
        );
    }

    /// The migration core's target allocator for these tests.
    extern "C" fn alloc_target(
        _src: *mut bindings::folio,
        _private: c_ulong,
    ) -> *mut bindings::folio {
        // SAFETY: Plain order-0 allocation.
        let page = unsafe { bindings::alloc_pages(GFP_KERNEL.as_raw(), 0) };
        // CAST: An order-0 page is its own folio.
        page.cast()
    }

    /// Enqueues a page and isolates it the way compaction does, onto `isolated`, the list the
    /// migration core takes pages from. Returns the page.
    fn enqueue_and_isolate(
        b: &Balloon<Scripted>,
        isolated: &PageList,
    ) -> Result<NonNull<bindings::page>> {
        let raw = BalloonPage::alloc().ok_or(ENOMEM)?.into_raw();
        // SAFETY: `raw` came from `into_raw` and nothing else owns it.
        b.enqueue(unsafe { BalloonPage::from_raw(raw) });
        // SAFETY: `raw` is a balloon page; isolation takes its own reference.
        assert!(unsafe { bindings::isolate_movable_ops_page(raw.as_ptr(), 0) });
        // SAFETY: Isolated, the page is off the balloon list, and its `lru` is free for the
        // migration core's list, as compaction uses it. The `PageList` does not count it: it
        // is only the list head here.
        unsafe { bindings::list_add_tail(lru(raw), isolated.head()) };
        Ok(raw)
    }

    /// Gives pages the migration core did not migrate back to their balloon.
    fn putback(isolated: &PageList) {
        // SAFETY: The list holds isolated movable_ops pages only.
        unsafe { bindings::putback_movable_pages(isolated.head()) };
    }

    #[test]
    fn empty_list_while_isolated_is_not_a_bug() -> Result {
        let b = balloon()?;
        stack_pin_init!(let isolated = PageList::new());
        enqueue_and_isolate(&b, &isolated)?;
        assert_eq!((b.pages(), b.isolated()), (1, 1));
        // `balloon_page_dequeue()` would BUG() if it also thought no page was isolated; the
        // wrapper just finds nothing.
        assert!(b.dequeue().is_none());
        putback(&isolated);
        assert_eq!(b.isolated(), 0);
        assert!(b.dequeue().is_some());
        assert_eq!(b.pages(), 0);
        Ok(())
    }

    #[test]
    fn migration_outcomes() -> Result {
        let b = balloon()?;
        for outcome in OUTCOMES {
            b.handler().answer(outcome);
            stack_pin_init!(let isolated = PageList::new());
            let old_pfn = pfn_of(enqueue_and_isolate(&b, &isolated)?).get();
            let calls = b.handler().calls.load(Relaxed);
            // SAFETY: `isolated` holds one isolated movable_ops page; `alloc_target` returns
            // fresh order-0 folios, which the core frees if it does not use them.
            let rc = unsafe {
                bindings::migrate_pages(
                    isolated.head(),
                    Some(alloc_target),
                    None,
                    0,
                    bindings::migrate_mode_MIGRATE_SYNC,
                    bindings::migrate_reason_MR_SYSCALL,
                    core::ptr::null_mut(),
                )
            };
            assert!(b.handler().calls.load(Relaxed) > calls);
            assert_eq!(b.handler().last_old.load(Relaxed), old_pfn);
            match outcome {
                Migration::Migrated => {
                    assert_eq!((rc, b.pages(), b.isolated()), (0, 1, 0));
                    let page = b.dequeue().ok_or(EINVAL)?;
                    assert_eq!(page.pfn().get(), b.handler().last_new.load(Relaxed));
                    assert_ne!(page.pfn().get(), old_pfn);
                }
                Migration::Deflated => {
                    // The core dropped the old page from the balloon and freed it.
                    assert_eq!((rc, b.pages(), b.isolated()), (0, 0, 0));
                    assert!(b.dequeue().is_none());
                }
                Migration::Busy | Migration::Failed => {
                    // Not migrated (Busy after the core's retries): still isolated until put
                    // back, then the same page is in the balloon again.
                    assert_eq!((rc, b.pages(), b.isolated()), (1, 1, 1));
                    putback(&isolated);
                    let page = b.dequeue().ok_or(EINVAL)?;
                    assert_eq!(page.pfn().get(), old_pfn);
                }
            }
            assert_eq!((b.pages(), b.isolated()), (0, 0));
        }
        Ok(())
    }
}
