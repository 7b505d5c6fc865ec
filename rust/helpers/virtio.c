// SPDX-License-Identifier: GPL-2.0

#include <linux/virtio.h>
#include <linux/virtio_config.h>

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

__rust_helper void rust_helper___virtio_cread_many(struct virtio_device *vdev,
						   unsigned int offset, void *buf,
						   size_t count, size_t bytes)
{
	__virtio_cread_many(vdev, offset, buf, count, bytes);
}

#endif /* CONFIG_VIRTIO */
