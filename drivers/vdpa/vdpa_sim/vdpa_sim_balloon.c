// SPDX-License-Identifier: GPL-2.0-only
/*
 * vDPA simulator for the virtio memory balloon device.
 *
 * A virtio-balloon device (virtio 1.2, section 5.5) for testing balloon
 * drivers in the guest that runs it, bound through virtio_vdpa exactly as a
 * balloon behind virtio-pci is. It is a checking host:
 *
 * - it keeps the set of 4 KiB frames the driver has inflated; a frame
 *   inflated twice, or deflated while not in the balloon, is a protocol
 *   error;
 * - it fills every inflated frame with a pattern, and checks the pattern is
 *   intact when the frame leaves the balloon (deflate, the deflate half of a
 *   migration, a reset, the removal of the device): a change means the guest
 *   wrote a page it had given away;
 * - reported free pages and free page hints must not include a frame in the
 *   balloon; reported pages are discarded (zeroed) as a host would, unless
 *   the driver's poison value must be preserved.
 *
 * Requests are answered from the simulator's worker, after a configurable
 * delay: never inside the notify that carried them. Debugfs
 * (vdpasim_balloon/<device>/) has the counters ("state") and the knobs
 * ("control"): the target, the answer delay, the statistics interval, free
 * page hinting commands, and hostile modes in which the device holds
 * buffers, answers with a used length larger than the buffer, with an id
 * that was never added, or twice, or changes its configuration in a loop.
 *
 * Locking: the device mutex (vdpasim->mutex) serialises the rings and
 * everything the worker uses: the frame bitmap, held buffers, counters. The
 * configuration space fields are under vb->lock, a spinlock, because drivers
 * read them from any context.
 */

#include <linux/bitmap.h>
#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/highmem.h>
#include <linux/kasan.h>
#include <linux/memory_hotplug.h>
#include <linux/mmzone.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <linux/uaccess.h>
#include <linux/vdpa.h>
#include <linux/vmalloc.h>
#include <linux/vringh.h>
#include <linux/workqueue.h>
#include <uapi/linux/vdpa.h>
#include <uapi/linux/virtio_balloon.h>
#include <uapi/linux/virtio_ids.h>

#include "vdpa_sim.h"

#define DRV_VERSION  "0.1"
#define DRV_DESC     "vDPA Device Simulator for memory balloon device"
#define DRV_LICENSE  "GPL"

#define VDPASIM_BALLOON_FEATURES				\
	((1ULL << VIRTIO_F_ANY_LAYOUT) |			\
	 (1ULL << VIRTIO_F_VERSION_1) |				\
	 (1ULL << VIRTIO_BALLOON_F_MUST_TELL_HOST) |		\
	 (1ULL << VIRTIO_BALLOON_F_STATS_VQ) |			\
	 (1ULL << VIRTIO_BALLOON_F_DEFLATE_ON_OOM) |		\
	 (1ULL << VIRTIO_BALLOON_F_FREE_PAGE_HINT) |		\
	 (1ULL << VIRTIO_BALLOON_F_PAGE_POISON) |		\
	 (1ULL << VIRTIO_BALLOON_F_REPORTING))

#define VB_FRAME		BIT(VIRTIO_BALLOON_PFN_SHIFT)
#define VB_FRAMES_PER_PAGE	(PAGE_SIZE / VB_FRAME)
#define VB_QUEUE_MAX		256
/* Requests served per queue before the worker lets others run */
#define VB_BATCH		16

/* The queues, in the order the device numbers those that exist */
enum vb_role {
	VB_INFLATE,
	VB_DEFLATE,
	VB_STATS,
	VB_HINT,
	VB_REPORT,
	VB_NR,
	VB_ALL = VB_NR,
};

static const char *const vb_role_names[] = {
	"inflate", "deflate", "stats", "hint", "report", "all",
};

enum vb_hostile {
	VB_OK,		/* answer every request as the spec says */
	VB_HOLD,	/* keep every buffer until "release" */
	VB_LONG_LEN,	/* used length larger than the buffer */
	VB_BAD_ID,	/* the next answer names an id that was never added */
	VB_TWICE,	/* the next buffer is answered twice */
};

static const char *const vb_hostile_names[] = {
	"none", "hold", "long_len", "bad_id", "twice",
};

struct vb_counters {
	u64 requests[VB_NR];
	u64 frames_inflated;
	u64 frames_deflated;
	u64 frames_checked;
	u64 protocol_errors;
	u64 pattern_violations;
	u64 reused_before_ack;
	u64 reported_frames;
	u64 hinted_frames;
	u64 hint_starts;
	u64 hint_stops;
	u64 hint_stale;
	u64 stats_requests;
	u64 stats_updates;
	u64 resets;
	u64 held_at_reset;
	u64 hostile_answers;
};

struct vdpasim_balloon {
	struct vdpasim vdpasim;
	struct dentry *debugfs;

	/* Configuration space */
	spinlock_t lock;
	u32 num_pages;
	u32 actual;
	u32 cmd_id;
	u32 poison_val;
	u32 next_cmd_id;

	/* Under vdpasim.mutex */
	unsigned long *frames;	/* the frames in the balloon */
	unsigned long nframes;	/* the size of the bitmap */
	unsigned long held;	/* frames in the balloon */
	enum vb_hostile hostile;
	enum vb_role hostile_role;
	u16 held_heads[VB_NR][VB_QUEUE_MAX];
	unsigned int nheld_heads[VB_NR];
	bool stats_pending;
	u16 stats_head;
	u64 stats[VIRTIO_BALLOON_S_NR];
	u32 stats_seen;
	u32 guest_cmd_id;
	bool gone;
	struct vb_counters c;

	unsigned int delay_us;		/* READ_ONCE: the worker reads it */
	unsigned int stats_interval_ms;
	struct delayed_work stats_work;
};

static struct dentry *vb_debugfs_root;

static struct vdpasim_balloon *sim_to_vb(struct vdpasim *vdpasim)
{
	return container_of(vdpasim, struct vdpasim_balloon, vdpasim);
}

static bool vb_has(struct vdpasim_balloon *vb, unsigned int bit)
{
	return vb->vdpasim.features & (1ULL << bit);
}

/* The role of device queue @idx: the queues of features not negotiated do not exist. */
static int vb_role(struct vdpasim_balloon *vb, int idx)
{
	int roles[VB_NR], n = 0;

	roles[n++] = VB_INFLATE;
	roles[n++] = VB_DEFLATE;
	if (vb_has(vb, VIRTIO_BALLOON_F_STATS_VQ))
		roles[n++] = VB_STATS;
	if (vb_has(vb, VIRTIO_BALLOON_F_FREE_PAGE_HINT))
		roles[n++] = VB_HINT;
	if (vb_has(vb, VIRTIO_BALLOON_F_REPORTING))
		roles[n++] = VB_REPORT;
	return idx < n ? roles[idx] : -1;
}

static struct vdpasim_virtqueue *vb_queue(struct vdpasim_balloon *vb, enum vb_role role)
{
	int i;

	for (i = 0; i < vb->vdpasim.dev_attr.nvqs; i++)
		if (vb_role(vb, i) == role)
			return &vb->vdpasim.vqs[i];
	return NULL;
}

static __printf(2, 3) void vb_error(struct vdpasim_balloon *vb, const char *fmt, ...)
{
	struct va_format vaf;
	va_list args;

	vb->c.protocol_errors++;
	va_start(args, fmt);
	vaf.fmt = fmt;
	vaf.va = &args;
	dev_info_ratelimited(&vb->vdpasim.vdpa.dev, "protocol error: %pV\n", &vaf);
	va_end(args);
}

/* The byte an inflated frame is filled with: never 0x00 or 0xff. */
static u8 vb_pattern(unsigned long pfn)
{
	return 0xa5 | (pfn & 0x1a);
}

/*
 * Maps 4 KiB frame @pfn of guest memory, or returns NULL if it is not RAM
 * this device may touch.
 *
 * A frame number names this kernel's own memory only while the IOTLB passes
 * through and no user address space is bound: that is how virtio_vdpa runs
 * a driver without ACCESS_PLATFORM. Through vhost-vdpa a user either maps
 * its own addresses (the pass-through ends) or binds its address space
 * (mm_bound), and then no frame number it sends is used. A vhost-vdpa user
 * that does neither already has the simulator read and write the physical
 * addresses it names for its rings, so frame numbers give it nothing more.
 * The IOTLB lock holds the mapping until vb_unmap(). Reserved pages (kernel
 * image, firmware) are never balloon pages: refused.
 *
 * Until vb_unmap(), KASAN looks away: a host reads and writes guest memory
 * whatever the guest's allocator thinks of it, and finding out what the
 * guest did with a frame (freed it untold, say) is the point of the check.
 */
static void *vb_map(struct vdpasim_balloon *vb, unsigned long pfn)
{
	struct vdpasim *vdpasim = &vb->vdpasim;
	struct page *page = NULL;

	if (pfn >= vb->nframes)
		return NULL;
	spin_lock(&vdpasim->iommu_lock);
	if (vdpasim->iommu_pt[0] && !vdpasim->mm_bound)
		page = pfn_to_online_page(pfn / VB_FRAMES_PER_PAGE);
	if (!page || PageReserved(page)) {
		spin_unlock(&vdpasim->iommu_lock);
		return NULL;
	}
	kasan_disable_current();
	return kmap_local_page(page) + (pfn % VB_FRAMES_PER_PAGE) * VB_FRAME;
}

static void vb_unmap(struct vdpasim_balloon *vb, void *va)
{
	kunmap_local(va);
	kasan_enable_current();
	spin_unlock(&vb->vdpasim.iommu_lock);
}

/*
 * Finds the first byte of the frame at @va that is not @want: its offset,
 * or VB_FRAME. Read without faulting: a page the guest freed untold may be
 * out of the direct map (DEBUG_PAGEALLOC, KFENCE), and reads as changed.
 */
static size_t vb_find_changed(const void *va, u8 want)
{
	u8 buf[256];
	size_t off;
	u8 *bad;

	for (off = 0; off < VB_FRAME; off += sizeof(buf)) {
		if (copy_from_kernel_nofault(buf, va + off, sizeof(buf)))
			return off;
		bad = memchr_inv(buf, want, sizeof(buf));
		if (bad)
			return off + (bad - buf);
	}
	return VB_FRAME;
}

/* Checks that frame @pfn still holds its pattern as it leaves the balloon. */
static void vb_check(struct vdpasim_balloon *vb, unsigned long pfn, const char *why)
{
	u8 want = vb_pattern(pfn);
	void *va = vb_map(vb, pfn);
	size_t off;

	if (!va)
		return;
	off = vb_find_changed(va, want);
	vb->c.frames_checked++;
	if (off < VB_FRAME) {
		/* Without MUST_TELL_HOST the guest may reuse a page it is deflating. */
		if (!strcmp(why, "deflate") &&
		    !vb_has(vb, VIRTIO_BALLOON_F_MUST_TELL_HOST)) {
			vb->c.reused_before_ack++;
		} else {
			vb->c.pattern_violations++;
			dev_info_ratelimited(&vb->vdpasim.vdpa.dev,
					     "frame %#lx written while in the balloon (from byte %#zx), found at %s\n",
					     pfn, off, why);
		}
	}
	vb_unmap(vb, va);
}

static void vb_inflate_frame(struct vdpasim_balloon *vb, unsigned long pfn)
{
	void *va = vb_map(vb, pfn);

	if (!va) {
		vb_error(vb, "inflated frame %#lx is not RAM", pfn);
		return;
	}
	if (__test_and_set_bit(pfn, vb->frames)) {
		vb_error(vb, "frame %#lx inflated twice", pfn);
	} else {
		memset(va, vb_pattern(pfn), VB_FRAME);
		vb->held++;
		vb->c.frames_inflated++;
	}
	vb_unmap(vb, va);
}

static void vb_deflate_frame(struct vdpasim_balloon *vb, unsigned long pfn)
{
	if (pfn >= vb->nframes || !__test_and_clear_bit(pfn, vb->frames)) {
		vb_error(vb, "deflated frame %#lx is not in the balloon", pfn);
		return;
	}
	vb_check(vb, pfn, "deflate");
	vb->held--;
	vb->c.frames_deflated++;
}

/* Every frame leaves the balloon without being told: checked and forgotten. */
static void vb_forget_frames(struct vdpasim_balloon *vb, const char *why)
{
	unsigned long pfn;

	for_each_set_bit(pfn, vb->frames, vb->nframes) {
		vb_check(vb, pfn, why);
		__clear_bit(pfn, vb->frames);
		vb->c.held_at_reset++;
		cond_resched();
	}
	vb->held = 0;
}

/* An inflate or deflate request: an out-buffer of 32-bit frame numbers. */
static void vb_frames(struct vdpasim_balloon *vb, struct vdpasim_virtqueue *vq,
		      bool inflate)
{
	struct vdpasim *sim = &vb->vdpasim;
	__virtio32 pfns[64];
	ssize_t got;
	int i;

	while ((got = vringh_iov_pull_iotlb(&vq->vring, &vq->out_iov, pfns,
					    sizeof(pfns))) > 0) {
		if (got % sizeof(pfns[0]))
			vb_error(vb, "a frame number is cut short");
		for (i = 0; i < got / sizeof(pfns[0]); i++) {
			unsigned long pfn = vdpasim32_to_cpu(sim, pfns[i]);

			if (inflate)
				vb_inflate_frame(vb, pfn);
			else
				vb_deflate_frame(vb, pfn);
		}
	}
	if (got < 0)
		vb_error(vb, "cannot read a frame list (%zd)", got);
	if (vq->in_iov.used)
		vb_error(vb, "writable buffer on the %s queue",
			 inflate ? "inflate" : "deflate");
}

/* Whether guest-physical range [@addr, @addr + @len) holds a frame of the balloon. */
static bool vb_overlaps(struct vdpasim_balloon *vb, u64 addr, u64 len)
{
	unsigned long first = addr >> VIRTIO_BALLOON_PFN_SHIFT;
	unsigned long end = DIV_ROUND_UP(addr + len, VB_FRAME);

	if (!len || first >= vb->nframes)
		return false;
	end = min(end, vb->nframes);
	return find_next_bit(vb->frames, end, first) < end;
}

/* Checks the writable ranges of a report or hint; returns their size in bytes. */
static u64 vb_free_ranges(struct vdpasim_balloon *vb, struct vdpasim_virtqueue *vq,
			  const char *what)
{
	struct vringh_kiov *wiov = &vq->in_iov;
	u64 total = 0;
	unsigned int i;

	/* The pass-through IOTLB makes the addresses guest-physical. */
	for (i = wiov->i; i < wiov->used; i++) {
		u64 addr = (uintptr_t)wiov->iov[i].iov_base;
		u64 len = wiov->iov[i].iov_len;

		if (vb_overlaps(vb, addr, len))
			vb_error(vb, "%s %#llx+%#llx includes a frame in the balloon",
				 what, addr, len);
		total += len;
	}
	return total;
}

/* A free page report: the host discards the pages, so they read as zero. */
static void vb_report(struct vdpasim_balloon *vb, struct vdpasim_virtqueue *vq)
{
	static const u8 zeros[256];
	u64 len = vb_free_ranges(vb, vq, "report");
	bool keep;
	ssize_t put;

	vb->c.reported_frames += len >> VIRTIO_BALLOON_PFN_SHIFT;
	spin_lock(&vb->lock);
	keep = vb_has(vb, VIRTIO_BALLOON_F_PAGE_POISON) && vb->poison_val;
	spin_unlock(&vb->lock);
	if (keep)
		return;
	/* A host writes free memory KASAN watches; it does not see devices. */
	kasan_disable_current();
	do {
		put = vringh_iov_push_iotlb(&vq->vring, &vq->in_iov, zeros,
					    sizeof(zeros));
	} while (put > 0);
	kasan_enable_current();
	if (put < 0)
		vb_error(vb, "cannot write a reported range (%zd)", put);
}

/* A free page hinting request: a command id (out) or a hinted block (in). */
static void vb_hint(struct vdpasim_balloon *vb, struct vdpasim_virtqueue *vq)
{
	__virtio32 raw;
	u32 id, cur;

	if (vringh_iov_pull_iotlb(&vq->vring, &vq->out_iov, &raw, sizeof(raw)) ==
	    sizeof(raw)) {
		id = vdpasim32_to_cpu(&vb->vdpasim, raw);
		spin_lock(&vb->lock);
		cur = vb->cmd_id;
		spin_unlock(&vb->lock);
		if (id == VIRTIO_BALLOON_CMD_ID_STOP) {
			vb->c.hint_stops++;
		} else if (id == cur && id != vb->guest_cmd_id) {
			vb->guest_cmd_id = id;
			vb->c.hint_starts++;
		} else {
			vb->c.hint_stale++;
		}
	}
	vb->c.hinted_frames += vb_free_ranges(vb, vq, "hint") >> VIRTIO_BALLOON_PFN_SHIFT;
}

/* A statistics buffer: tag/value pairs, kept until the next request. */
static void vb_stats(struct vdpasim_balloon *vb, struct vdpasim_virtqueue *vq)
{
	struct virtio_balloon_stat st[VIRTIO_BALLOON_S_NR];
	ssize_t got;
	int i;

	while ((got = vringh_iov_pull_iotlb(&vq->vring, &vq->out_iov, st,
					    sizeof(st))) > 0) {
		for (i = 0; i < got / sizeof(st[0]); i++) {
			u16 tag = vdpasim16_to_cpu(&vb->vdpasim, st[i].tag);

			/* The device ignores tags it does not know (5.5.6.3). */
			if (tag >= VIRTIO_BALLOON_S_NR)
				continue;
			vb->stats[tag] = vdpasim64_to_cpu(&vb->vdpasim, st[i].val);
			vb->stats_seen |= BIT(tag);
		}
	}
	vb->c.stats_updates++;
}

static void vb_notify(struct vdpasim_virtqueue *vq)
{
	/* Make sure used is visible before raising the interrupt. */
	smp_wmb();
	local_bh_disable();
	if (vringh_need_notify_iotlb(&vq->vring) > 0)
		vringh_notify(&vq->vring);
	local_bh_enable();
}

/* Returns buffer @head of queue @role to the driver, or misbehaves as told to. */
static void vb_answer(struct vdpasim_balloon *vb, struct vdpasim_virtqueue *vq,
		      enum vb_role role, u16 head, u32 len)
{
	enum vb_hostile mode = VB_OK;

	if (vb->hostile_role == VB_ALL || vb->hostile_role == role)
		mode = vb->hostile;

	switch (mode) {
	case VB_OK:
		break;
	case VB_HOLD:
		if (vb->nheld_heads[role] < VB_QUEUE_MAX) {
			vb->held_heads[role][vb->nheld_heads[role]++] = head;
			return;
		}
		break;
	case VB_LONG_LEN:
		len += PAGE_SIZE;
		vb->c.hostile_answers++;
		break;
	case VB_BAD_ID:
		/* Out of range for any ring: the driver must mark it broken. */
		head = vq->vring.vring.num + 7;
		vb->hostile = VB_OK;
		vb->c.hostile_answers++;
		break;
	case VB_TWICE:
		vringh_complete_iotlb(&vq->vring, head, len);
		vb->hostile = VB_OK;
		vb->c.hostile_answers++;
		break;
	}
	vringh_complete_iotlb(&vq->vring, head, len);
	vb_notify(vq);
}

/* Serves up to VB_BATCH requests of @vq; returns whether more may be waiting. */
static bool vb_serve(struct vdpasim_balloon *vb, struct vdpasim_virtqueue *vq,
		     enum vb_role role)
{
	int n, ret;

	for (n = 0; n < VB_BATCH; n++) {
		ret = vringh_getdesc_iotlb(&vq->vring, &vq->out_iov, &vq->in_iov,
					   &vq->head, GFP_ATOMIC);
		if (ret <= 0) {
			if (ret < 0)
				vb_error(vb, "bad descriptor chain on the %s queue (%d)",
					 vb_role_names[role], ret);
			return false;
		}
		vb->c.requests[role]++;
		switch (role) {
		case VB_INFLATE:
		case VB_DEFLATE:
			vb_frames(vb, vq, role == VB_INFLATE);
			break;
		case VB_STATS:
			vb_stats(vb, vq);
			if (vb->stats_pending) {
				vb_error(vb, "a second statistics buffer");
				vb_answer(vb, vq, role, vb->stats_head, 0);
			}
			/* Kept until the device wants statistics again. */
			vb->stats_pending = true;
			vb->stats_head = vq->head;
			continue;
		case VB_HINT:
			vb_hint(vb, vq);
			break;
		case VB_REPORT:
			vb_report(vb, vq);
			break;
		default:
			break;
		}
		vb_answer(vb, vq, role, vq->head, 0);
	}
	return true;
}

static void vdpasim_balloon_work(struct vdpasim *sim)
{
	struct vdpasim_balloon *vb = sim_to_vb(sim);
	unsigned int delay = READ_ONCE(vb->delay_us);
	bool again = false;
	int i, role;

	/* The answer comes later than the notify, and later still if asked. */
	if (delay)
		fsleep(delay);

	mutex_lock(&sim->mutex);
	if (!(sim->status & VIRTIO_CONFIG_S_DRIVER_OK) || !sim->running)
		goto out;
	for (i = 0; i < sim->dev_attr.nvqs; i++) {
		role = vb_role(vb, i);
		if (role < 0 || !sim->vqs[i].ready)
			continue;
		if (vb_serve(vb, &sim->vqs[i], role))
			again = true;
	}
out:
	mutex_unlock(&sim->mutex);
	if (again)
		vdpasim_schedule_work(sim);
}

/* Asks for statistics every stats_interval_ms, by giving the buffer back. */
static void vb_stats_tick(struct work_struct *work)
{
	struct vdpasim_balloon *vb = container_of(to_delayed_work(work),
						  struct vdpasim_balloon, stats_work);
	struct vdpasim *sim = &vb->vdpasim;
	struct vdpasim_virtqueue *vq;

	mutex_lock(&sim->mutex);
	if (vb->gone || !vb->stats_interval_ms)
		goto out;
	vq = vb_queue(vb, VB_STATS);
	if (vb->stats_pending && vq && vq->ready && sim->running &&
	    (sim->status & VIRTIO_CONFIG_S_DRIVER_OK)) {
		vb->stats_pending = false;
		vb->c.stats_requests++;
		vb_answer(vb, vq, VB_STATS, vb->stats_head, 0);
	}
	queue_delayed_work(system_dfl_wq, &vb->stats_work,
			   msecs_to_jiffies(vb->stats_interval_ms));
out:
	mutex_unlock(&sim->mutex);
}

/* Gives back every buffer the device held; called with the device mutex held. */
static void vb_release(struct vdpasim_balloon *vb)
{
	struct vdpasim_virtqueue *vq;
	enum vb_role role;
	unsigned int i;

	vb->hostile = VB_OK;
	for (role = 0; role < VB_NR; role++) {
		vq = vb_queue(vb, role);
		for (i = 0; vq && vq->ready && i < vb->nheld_heads[role]; i++)
			vringh_complete_iotlb(&vq->vring, vb->held_heads[role][i], 0);
		if (vq && vq->ready && vb->nheld_heads[role])
			vb_notify(vq);
		vb->nheld_heads[role] = 0;
	}
}

static void vdpasim_balloon_reset(struct vdpasim *sim)
{
	struct vdpasim_balloon *vb = sim_to_vb(sim);

	vb->c.resets++;
	memset(vb->nheld_heads, 0, sizeof(vb->nheld_heads));
	vb->stats_pending = false;
	vb->guest_cmd_id = 0;
	/* As QEMU: the driver tells its poison value again after a reset. */
	spin_lock(&vb->lock);
	vb->poison_val = 0;
	spin_unlock(&vb->lock);
	vb_forget_frames(vb, "reset");
}

static void vdpasim_balloon_get_config(struct vdpasim *sim, void *config)
{
	struct vdpasim_balloon *vb = sim_to_vb(sim);
	struct virtio_balloon_config *cfg = config;

	/* The balloon's configuration is little-endian, legacy devices too. */
	spin_lock(&vb->lock);
	cfg->num_pages = cpu_to_le32(vb->num_pages);
	cfg->actual = cpu_to_le32(vb->actual);
	cfg->free_page_hint_cmd_id = cpu_to_le32(vb->cmd_id);
	cfg->poison_val = cpu_to_le32(vb->poison_val);
	spin_unlock(&vb->lock);
}

static void vdpasim_balloon_set_config(struct vdpasim *sim, const void *config)
{
	struct vdpasim_balloon *vb = sim_to_vb(sim);
	const struct virtio_balloon_config *cfg = config;

	/* The driver writes actual and poison_val; the rest is the device's. */
	spin_lock(&vb->lock);
	vb->actual = le32_to_cpu(cfg->actual);
	vb->poison_val = le32_to_cpu(cfg->poison_val);
	spin_unlock(&vb->lock);
}

static void vb_set_num_pages(struct vdpasim_balloon *vb, u32 num_pages)
{
	spin_lock(&vb->lock);
	vb->num_pages = num_pages;
	spin_unlock(&vb->lock);
	vdpasim_config_changed(&vb->vdpasim);
}

static void vb_set_cmd_id(struct vdpasim_balloon *vb, const char *cmd)
{
	spin_lock(&vb->lock);
	if (!strcmp(cmd, "start")) {
		vb->cmd_id = vb->next_cmd_id++;
		if (vb->next_cmd_id > INT_MAX)
			vb->next_cmd_id = VIRTIO_BALLOON_CMD_ID_DONE + 1;
	} else if (!strcmp(cmd, "stop")) {
		vb->cmd_id = VIRTIO_BALLOON_CMD_ID_STOP;
	} else {
		vb->cmd_id = VIRTIO_BALLOON_CMD_ID_DONE;
	}
	spin_unlock(&vb->lock);
	vdpasim_config_changed(&vb->vdpasim);
}

static int vb_state_show(struct seq_file *m, void *unused)
{
	struct vdpasim_balloon *vb = m->private;
	struct vdpasim *sim = &vb->vdpasim;
	struct vb_counters *c = &vb->c;
	unsigned int held = 0;
	int i;

	mutex_lock(&sim->mutex);
	spin_lock(&vb->lock);
	seq_printf(m, "num_pages %u\nactual %u\ncmd_id %u\npoison_val %#x\n",
		   vb->num_pages, vb->actual, vb->cmd_id, vb->poison_val);
	spin_unlock(&vb->lock);
	seq_printf(m, "features %#llx\nnegotiated %#llx\nstatus %#x\n",
		   sim->dev_attr.supported_features, sim->features, sim->status);
	seq_printf(m, "delay_us %u\nstats_interval_ms %u\n",
		   READ_ONCE(vb->delay_us), vb->stats_interval_ms);
	seq_printf(m, "hostile %s\nhostile_queue %s\n",
		   vb_hostile_names[vb->hostile], vb_role_names[vb->hostile_role]);
	for (i = 0; i < VB_NR; i++)
		held += vb->nheld_heads[i];
	seq_printf(m, "frames_held %lu\nbuffers_held %u\nguest_cmd_id %u\n",
		   vb->held, held, vb->guest_cmd_id);
	for (i = 0; i < VB_NR; i++)
		seq_printf(m, "requests_%s %llu\n", vb_role_names[i], c->requests[i]);
	seq_printf(m, "frames_inflated %llu\nframes_deflated %llu\nframes_checked %llu\n",
		   c->frames_inflated, c->frames_deflated, c->frames_checked);
	seq_printf(m, "protocol_errors %llu\npattern_violations %llu\nreused_before_ack %llu\n",
		   c->protocol_errors, c->pattern_violations, c->reused_before_ack);
	seq_printf(m, "reported_frames %llu\nhinted_frames %llu\n",
		   c->reported_frames, c->hinted_frames);
	seq_printf(m, "hint_starts %llu\nhint_stops %llu\nhint_stale %llu\n",
		   c->hint_starts, c->hint_stops, c->hint_stale);
	seq_printf(m, "stats_requests %llu\nstats_updates %llu\n",
		   c->stats_requests, c->stats_updates);
	seq_printf(m, "resets %llu\nheld_at_reset %llu\nhostile_answers %llu\n",
		   c->resets, c->held_at_reset, c->hostile_answers);
	for (i = 0; i < VIRTIO_BALLOON_S_NR; i++)
		if (vb->stats_seen & BIT(i))
			seq_printf(m, "stat_%d %llu\n", i, vb->stats[i]);
	mutex_unlock(&sim->mutex);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(vb_state);

static int vb_lookup(const char *const *names, int n, const char *name)
{
	int i;

	for (i = 0; i < n; i++)
		if (!strcmp(names[i], name))
			return i;
	return -EINVAL;
}

/*
 * Commands, one per write:
 *   num_pages N         the target, in 4 KiB frames
 *   delay_us N          how long the worker waits before it answers
 *   stats_interval_ms N how often the device asks for statistics (0: never)
 *   hostile MODE [Q]    none, hold, long_len, bad_id, twice; Q a queue or all
 *   release             give back every held buffer, and behave again
 *   hint start|stop|done  free page hinting: a new command id, stop, done
 *   storm N             change num_pages N times in a loop, ending where it was
 */
static ssize_t vb_control_write(struct file *file, const char __user *ubuf,
				size_t count, loff_t *ppos)
{
	struct vdpasim_balloon *vb = file->private_data;
	struct vdpasim *sim = &vb->vdpasim;
	char buf[80], cmd[24], arg[24], arg2[24];
	unsigned int val, i;
	int n, mode, role;

	if (count >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	buf[count] = '\0';
	n = sscanf(buf, "%23s %23s %23s", cmd, arg, arg2);
	if (n < 1)
		return -EINVAL;

	if (!strcmp(cmd, "release") && n == 1) {
		mutex_lock(&sim->mutex);
		vb_release(vb);
		mutex_unlock(&sim->mutex);
		return count;
	}
	if (!strcmp(cmd, "hint") && n == 2) {
		if (strcmp(arg, "start") && strcmp(arg, "stop") && strcmp(arg, "done"))
			return -EINVAL;
		vb_set_cmd_id(vb, arg);
		return count;
	}
	if (!strcmp(cmd, "hostile") && (n == 2 || n == 3)) {
		mode = vb_lookup(vb_hostile_names, ARRAY_SIZE(vb_hostile_names), arg);
		role = n == 3 ? vb_lookup(vb_role_names, ARRAY_SIZE(vb_role_names), arg2)
			      : VB_ALL;
		if (mode < 0 || role < 0)
			return -EINVAL;
		mutex_lock(&sim->mutex);
		vb->hostile = mode;
		vb->hostile_role = role;
		mutex_unlock(&sim->mutex);
		/* Requests waiting in the rings meet the new mode now. */
		vdpasim_schedule_work(sim);
		return count;
	}
	if (n != 2 || kstrtouint(arg, 0, &val))
		return -EINVAL;

	if (!strcmp(cmd, "num_pages")) {
		vb_set_num_pages(vb, val);
	} else if (!strcmp(cmd, "delay_us")) {
		if (val > USEC_PER_SEC)
			return -ERANGE;
		WRITE_ONCE(vb->delay_us, val);
	} else if (!strcmp(cmd, "stats_interval_ms")) {
		mutex_lock(&sim->mutex);
		vb->stats_interval_ms = val;
		mutex_unlock(&sim->mutex);
		if (val)
			mod_delayed_work(system_dfl_wq, &vb->stats_work, 0);
	} else if (!strcmp(cmd, "storm")) {
		u32 base;

		if (val > 1000000)
			return -ERANGE;
		spin_lock(&vb->lock);
		base = vb->num_pages;
		spin_unlock(&vb->lock);
		for (i = 0; i < val; i++) {
			vb_set_num_pages(vb, base ^ (i & 1 ? 0 : 1));
			cond_resched();
		}
		vb_set_num_pages(vb, base);
	} else {
		return -EINVAL;
	}
	return count;
}

static const struct file_operations vb_control_fops = {
	.owner = THIS_MODULE,
	.open = simple_open,
	.write = vb_control_write,
	.llseek = noop_llseek,
};

static void vdpasim_balloon_free(struct vdpasim *sim)
{
	struct vdpasim_balloon *vb = sim_to_vb(sim);

	/* NULL if vdpasim_create() or dev_add failed: nothing else was set up. */
	if (vb->frames) {
		cancel_delayed_work_sync(&vb->stats_work);
		/* The device goes away: what it still held is the guest's again. */
		vb_forget_frames(vb, "removal");
		kvfree(vb->frames);
	}
}

static struct device *vdpasim_balloon_mgmtdev;

/* One past the last page frame of RAM: the frame bitmap covers up to there. */
static unsigned long vb_end_pfn(void)
{
	unsigned long end = 0;
	int nid;

	for_each_online_node(nid)
		end = max(end, pgdat_end_pfn(NODE_DATA(nid)));
	return end;
}

static int vdpasim_balloon_dev_add(struct vdpa_mgmt_dev *mdev, const char *name,
				   const struct vdpa_dev_set_config *config)
{
	struct vdpasim_dev_attr dev_attr = {};
	struct vdpasim_balloon *vb;
	struct vdpasim *simdev;
	int ret;

	dev_attr.mgmt_dev = mdev;
	dev_attr.name = name;
	dev_attr.id = VIRTIO_ID_BALLOON;
	dev_attr.supported_features = VDPASIM_BALLOON_FEATURES;
	dev_attr.nvqs = VB_NR;
	dev_attr.ngroups = 1;
	dev_attr.nas = 1;
	dev_attr.phys_access = true;
	dev_attr.alloc_size = sizeof(struct vdpasim_balloon);
	dev_attr.config_size = sizeof(struct virtio_balloon_config);
	dev_attr.get_config = vdpasim_balloon_get_config;
	dev_attr.set_config = vdpasim_balloon_set_config;
	dev_attr.reset = vdpasim_balloon_reset;
	dev_attr.work_fn = vdpasim_balloon_work;
	dev_attr.free = vdpasim_balloon_free;

	simdev = vdpasim_create(&dev_attr, config);
	if (IS_ERR(simdev))
		return PTR_ERR(simdev);

	vb = sim_to_vb(simdev);
	spin_lock_init(&vb->lock);
	INIT_DELAYED_WORK(&vb->stats_work, vb_stats_tick);
	vb->next_cmd_id = VIRTIO_BALLOON_CMD_ID_DONE + 1;
	vb->hostile_role = VB_ALL;
	vb->nframes = vb_end_pfn() * VB_FRAMES_PER_PAGE;
	vb->frames = kvcalloc(BITS_TO_LONGS(vb->nframes), sizeof(long), GFP_KERNEL);
	if (!vb->frames) {
		ret = -ENOMEM;
		goto put_dev;
	}

	vb->debugfs = debugfs_create_dir(name, vb_debugfs_root);
	debugfs_create_file("state", 0444, vb->debugfs, vb, &vb_state_fops);
	debugfs_create_file("control", 0200, vb->debugfs, vb, &vb_control_fops);

	ret = _vdpa_register_device(&simdev->vdpa, VB_NR);
	if (ret)
		goto remove_debugfs;

	return 0;

remove_debugfs:
	debugfs_remove_recursive(vb->debugfs);
put_dev:
	put_device(&simdev->vdpa.dev);
	return ret;
}

static void vdpasim_balloon_dev_del(struct vdpa_mgmt_dev *mdev,
				    struct vdpa_device *dev)
{
	struct vdpasim *simdev = container_of(dev, struct vdpasim, vdpa);
	struct vdpasim_balloon *vb = sim_to_vb(simdev);

	/* The driver is unbound once this returns; keep the device until after. */
	get_device(&dev->dev);
	_vdpa_unregister_device(dev);
	/* No control write runs after this, so nothing arms the work again. */
	debugfs_remove_recursive(vb->debugfs);
	mutex_lock(&simdev->mutex);
	vb->gone = true;
	mutex_unlock(&simdev->mutex);
	cancel_delayed_work_sync(&vb->stats_work);
	put_device(&dev->dev);
}

static const struct vdpa_mgmtdev_ops vdpasim_balloon_mgmtdev_ops = {
	.dev_add = vdpasim_balloon_dev_add,
	.dev_del = vdpasim_balloon_dev_del
};

static struct virtio_device_id id_table[] = {
	{ VIRTIO_ID_BALLOON, VIRTIO_DEV_ANY_ID },
	{ 0 },
};

static struct vdpa_mgmt_dev mgmt_dev = {
	.id_table = id_table,
	.ops = &vdpasim_balloon_mgmtdev_ops,
	.config_attr_mask = BIT_ULL(VDPA_ATTR_DEV_FEATURES),
	.supported_features = VDPASIM_BALLOON_FEATURES,
	.max_supported_vqs = VB_NR,
};

static int __init vdpasim_balloon_init(void)
{
	int ret;

	vdpasim_balloon_mgmtdev = root_device_register("vdpasim_balloon");
	if (IS_ERR(vdpasim_balloon_mgmtdev))
		return PTR_ERR(vdpasim_balloon_mgmtdev);

	vb_debugfs_root = debugfs_create_dir("vdpasim_balloon", NULL);
	mgmt_dev.device = vdpasim_balloon_mgmtdev;
	ret = vdpa_mgmtdev_register(&mgmt_dev);
	if (ret) {
		debugfs_remove_recursive(vb_debugfs_root);
		root_device_unregister(vdpasim_balloon_mgmtdev);
	}
	return ret;
}

static void __exit vdpasim_balloon_exit(void)
{
	vdpa_mgmtdev_unregister(&mgmt_dev);
	debugfs_remove_recursive(vb_debugfs_root);
	root_device_unregister(vdpasim_balloon_mgmtdev);
}

module_init(vdpasim_balloon_init)
module_exit(vdpasim_balloon_exit)

MODULE_VERSION(DRV_VERSION);
MODULE_LICENSE(DRV_LICENSE);
MODULE_DESCRIPTION(DRV_DESC);
