// SPDX-License-Identifier: GPL-2.0

#include <linux/balloon.h>

#ifdef CONFIG_BALLOON
__rust_helper void rust_helper_balloon_devinfo_init(struct balloon_dev_info *balloon)
{
	balloon_devinfo_init(balloon);
}
#endif
