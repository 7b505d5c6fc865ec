// SPDX-License-Identifier: GPL-2.0

#include <linux/mm.h>
#include <linux/vmstat.h>

__rust_helper unsigned long rust_helper_global_node_page_state(enum node_stat_item item)
{
	return global_node_page_state(item);
}
