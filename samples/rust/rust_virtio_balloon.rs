// SPDX-License-Identifier: GPL-2.0

//! Rust virtio memory balloon driver.
//!
//! The host asks for memory through the device's `num_pages`. The driver takes pages from the
//! guest (inflate) or gives them back (deflate), tells the host their frame numbers through the
//! inflate and deflate queues, and reports its size in `actual`. Pages in the balloon stay
//! movable: compaction migrates them through [`Host::migrate`], which tells the host about the
//! new page and the old one.
//!
//! This first version sizes the balloon when it binds and empties it when it unbinds; following
//! the host's target while bound needs deferred work, which comes with the rest of the C
//! driver's features.

use pin_init::stack_pin_init;

use kernel::{
    balloon::{
        Balloon,
        BalloonPage,
        ManagedPages,
        MigrateMode,
        Migration,
        MigrationHandler,
        NewPage,
        OldPage,
        PageList,
        Pfn,
        FRAMES_4K_PER_PAGE, //
    },
    device::{
        Bound,
        Core, //
    },
    new_mutex,
    prelude::*,
    sync::{
        Mutex,
        MutexGuard, //
    },
    virtio::{
        self,
        le,
        Feature,
        QueueInfo,
        Virtqueues, //
    },
};

/// `VIRTIO_BALLOON_F_MUST_TELL_HOST`: deflated pages may only be reused after the host was told.
const F_MUST_TELL_HOST: Feature = Feature::new(0);

/// The device's configuration space (`struct virtio_balloon_config`).
#[repr(C)]
struct Config {
    num_pages: le::U32,
    actual: le::U32,
    free_page_hint_cmd_id: le::U32,
    poison_val: le::U32,
}

/// Frame numbers per request, as in the C driver.
const PFNS_PER_REQUEST: usize = 256;
const PAGES_PER_REQUEST: usize = PFNS_PER_REQUEST / FRAMES_4K_PER_PAGE;

type Pfns = [le::U32; PFNS_PER_REQUEST];
type PfnBuffer = KBox<Pfns>;

const INFLATE: usize = 0;
const DEFLATE: usize = 1;

kernel::virtio_device_table!(
    VIRTIO_BALLOON_TABLE,
    [virtio::DeviceId::new(virtio::DeviceId::BALLOON)]
);

kernel::module_virtio_driver! {
    type: VirtioBalloonDriver,
    name: "rust_virtio_balloon",
    authors: ["Rust balloon contributors"],
    description: "Virtio memory balloon driver written in Rust",
    license: "GPL",
}

/// The host side of the balloon: the queues it is told through, and the migration handler.
#[pin_data]
struct Host<'a> {
    #[pin]
    vqs: Virtqueues<'a, ()>,
    /// The one frame-number buffer. Holding it serialises requests, as `balloon_lock` does
    /// for `vb->pfns` in C; it is `None` only if the device kept it (a broken device).
    #[pin]
    pfns: Mutex<Option<PfnBuffer>>,
}

impl Host<'_> {
    /// Sends the frames of `pages` on `queue` and waits until the host has read them.
    fn tell(
        &self,
        slot: &mut MutexGuard<'_, Option<PfnBuffer>>,
        queue: usize,
        pages: impl Iterator<Item = Pfn>,
    ) -> Result {
        let mut buf = slot.take().ok_or(EIO)?;
        let mut n = 0;
        for frame in pages.flat_map(Pfn::frames_4k).take(PFNS_PER_REQUEST) {
            buf[n] = le::U32::new(u32::try_from(frame)?);
            n += 1;
        }
        let mut vq = self.vqs.lock::<PfnBuffer>(queue)?;
        if let Err((err, buf)) = vq.add_outbuf(buf, n * core::mem::size_of::<le::U32>(), GFP_KERNEL)
        {
            **slot = Some(buf);
            return Err(err);
        }
        vq.kick();
        **slot = Some(vq.wait_buf()?.buf);
        Ok(())
    }
}

impl MigrationHandler for Host<'_> {
    fn migrate(&self, new: &NewPage<'_>, old: &OldPage<'_>, _mode: MigrateMode) -> Migration {
        // Inflation may be waiting for memory that this migration frees: never wait for it.
        let Some(mut slot) = self.pfns.try_lock() else {
            return Migration::Busy;
        };
        if self
            .tell(&mut slot, INFLATE, [new.pfn()].into_iter())
            .is_err()
        {
            return Migration::Busy;
        }
        // The host has the new page: the old one leaves the balloon whatever happens now.
        let _ = self.tell(&mut slot, DEFLATE, [old.pfn()].into_iter());
        Migration::Migrated
    }
}

#[pin_data]
struct VirtioBalloon<'a> {
    dev: &'a virtio::Device<Bound>,
    #[pin]
    balloon: Balloon<Host<'a>>,
}

impl VirtioBalloon<'_> {
    /// The host's target, in pages.
    fn target(&self) -> usize {
        kernel::virtio_cread!(self.dev, Config, num_pages).get() as usize / FRAMES_4K_PER_PAGE
    }

    /// Inflates by up to `count` pages; returns how many joined the balloon.
    fn fill(&self, count: usize) -> Result<usize> {
        stack_pin_init!(let list = PageList::new());
        for _ in 0..count {
            let Some(page) = BalloonPage::alloc() else {
                dev_info!(self.dev, "Out of puff! Can't get {} pages\n", count);
                break;
            };
            list.as_mut().push(page);
        }
        if list.is_empty() {
            return Ok(0);
        }
        let host = self.balloon.handler();
        host.tell(&mut host.pfns.lock(), INFLATE, list.pfns())?;
        Ok(self.balloon.enqueue_list(list.as_mut()))
    }

    /// Deflates by up to `count` pages; returns how many left the balloon.
    fn leak(&self, count: usize) -> usize {
        stack_pin_init!(let list = PageList::new());
        let n = self.balloon.dequeue_list(list.as_mut(), count);
        if n != 0 {
            let host = self.balloon.handler();
            // Without MUST_TELL_HOST the host does not need to know before the pages are
            // reused; telling it first is right either way, as the C driver does.
            if let Err(e) = host.tell(&mut host.pfns.lock(), DEFLATE, list.pfns()) {
                if self.dev.has_feature(F_MUST_TELL_HOST) {
                    dev_warn!(self.dev, "deflating {} pages untold: {:?}\n", n, e);
                }
            }
        }
        n
    }

    /// Reports the balloon's size to the host.
    fn update_actual(&self) {
        let frames = self.balloon.pages() * FRAMES_4K_PER_PAGE;
        kernel::virtio_cwrite!(self.dev, Config, actual, le::U32::new(frames as u32));
    }

    /// Moves the balloon to `target` pages, reporting its size after every step as the C
    /// driver does.
    fn resize(&self, target: usize) -> Result {
        while self.balloon.pages() < target {
            let filled = self.fill((target - self.balloon.pages()).min(PAGES_PER_REQUEST));
            self.update_actual();
            if filled? == 0 {
                break;
            }
        }
        while self.balloon.pages() > target {
            if self.leak((self.balloon.pages() - target).min(PAGES_PER_REQUEST)) == 0 {
                // Every remaining page is isolated for migration; it comes back shortly.
                kernel::time::delay::fsleep(kernel::time::Delta::from_millis(1));
            }
            self.update_actual();
        }
        Ok(())
    }
}

struct VirtioBalloonDriver;

#[vtable]
impl virtio::Driver for VirtioBalloonDriver {
    type Data<'bound> = VirtioBalloon<'bound>;

    const ID_TABLE: virtio::IdTable = &VIRTIO_BALLOON_TABLE;
    const FEATURES: &'static [Feature] = &[F_MUST_TELL_HOST];

    fn probe<'bound>(
        dev: &'bound virtio::Device<Core<'_>>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        let queues = [
            QueueInfo::new::<PfnBuffer>(c"inflate"),
            QueueInfo::new::<PfnBuffer>(c"deflate"),
        ];
        let pfns = KBox::new([le::U32::ZERO; PFNS_PER_REQUEST], GFP_KERNEL);
        let bound: &'bound virtio::Device<Bound> = dev;
        let vqs = Virtqueues::new(dev, &queues, ());

        try_pin_init!(VirtioBalloon {
            dev: bound,
            balloon <- Balloon::new(
                ManagedPages::Adjust,
                try_pin_init!(Host {
                    vqs <- vqs,
                    pfns <- new_mutex!(Some(pfns?)),
                }? Error),
            ),
        }? Error)
        .pin_chain(|this| {
            this.balloon.handler().vqs.ready();
            if let Err(e) = this.resize(this.target()) {
                dev_warn!(this.dev, "inflating at probe: {:?}\n", e);
            }
            Ok(())
        })
    }

    fn unbind<'bound>(_dev: &'bound virtio::Device<Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        // Every page goes back before the device is reset.
        let _ = this.resize(0);
    }
}
