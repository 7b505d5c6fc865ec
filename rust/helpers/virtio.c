// SPDX-License-Identifier: GPL-2.0

#include <linux/scatterlist.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/workqueue.h>

#if IS_BUILTIN(CONFIG_VIRTIO)

__rust_helper bool rust_helper___virtio_test_bit(const struct virtio_device *vdev,
						 unsigned int fbit)
{
	return __virtio_test_bit(vdev, fbit);
}

__rust_helper void rust_helper___virtio_clear_bit(struct virtio_device *vdev,
						  unsigned int fbit)
{
	__virtio_clear_bit(vdev, fbit);
}

__rust_helper u8 rust_helper_virtio_get_status(struct virtio_device *vdev)
{
	return vdev->config->get_status(vdev);
}

__rust_helper void rust_helper_virtio_device_ready(struct virtio_device *vdev)
{
	virtio_device_ready(vdev);
}

__rust_helper int rust_helper_virtio_find_vqs(struct virtio_device *vdev,
					      unsigned int nvqs,
					      struct virtqueue *vqs[],
					      struct virtqueue_info vqs_info[])
{
	return virtio_find_vqs(vdev, nvqs, vqs, vqs_info, NULL);
}

/* There is no C wrapper for the op: the C drivers call it through the pointer. */
__rust_helper void rust_helper_virtio_del_vqs(struct virtio_device *vdev)
{
	vdev->config->del_vqs(vdev);
}

__rust_helper void rust_helper___virtio_cread_many(struct virtio_device *vdev,
						   unsigned int offset, void *buf,
						   size_t count, size_t bytes)
{
	__virtio_cread_many(vdev, offset, buf, count, bytes);
}

__rust_helper void rust_helper_virtio_config_get(struct virtio_device *vdev,
						 unsigned int offset, void *buf,
						 unsigned int len)
{
	might_sleep();
	vdev->config->get(vdev, offset, buf, len);
}

__rust_helper void rust_helper_virtio_config_set(struct virtio_device *vdev,
						 unsigned int offset,
						 const void *buf, unsigned int len)
{
	might_sleep();
	vdev->config->set(vdev, offset, buf, len);
}

#endif /* CONFIG_VIRTIO */
