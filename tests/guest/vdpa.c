// SPDX-License-Identifier: GPL-2.0
/*
 * vdpa: create and delete vDPA devices through the kernel's vDPA management
 * interface (generic netlink family "vdpa"), as iproute2's
 * "vdpa dev add mgmtdev MGMT name NAME [device_features F]" and
 * "vdpa dev del NAME" do; the busybox guest has no iproute2.
 *
 *   vdpa add MGMTDEV NAME [FEATURES]
 *   vdpa del NAME
 *
 * Exits 0 on success; otherwise prints the kernel's error and exits 1.
 */
#include <errno.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/vdpa.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct msg {
	struct nlmsghdr n;
	struct genlmsghdr g;
	char buf[512];
};

static void put_attr(struct msg *m, unsigned short type, const void *data, size_t len)
{
	struct nlattr *a = (struct nlattr *)((char *)m + NLMSG_ALIGN(m->n.nlmsg_len));

	a->nla_type = type;
	a->nla_len = NLA_HDRLEN + len;
	memcpy((char *)a + NLA_HDRLEN, data, len);
	m->n.nlmsg_len = NLMSG_ALIGN(m->n.nlmsg_len) + NLA_ALIGN(a->nla_len);
}

static void start(struct msg *m, unsigned short family, unsigned char cmd)
{
	memset(m, 0, sizeof(*m));
	m->n.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN);
	m->n.nlmsg_type = family;
	m->n.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	m->g.cmd = cmd;
	m->g.version = 1;
}

/* Sends @m and reads the answer into @reply; returns 0 or a negative errno. */
static int talk(int fd, struct msg *m, struct msg *reply)
{
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	struct nlmsgerr *err;
	ssize_t n;

	if (sendto(fd, m, m->n.nlmsg_len, 0, (struct sockaddr *)&kernel,
		   sizeof(kernel)) < 0)
		return -errno;
	for (;;) {
		n = recv(fd, reply, sizeof(*reply), 0);
		if (n < 0)
			return -errno;
		if (reply->n.nlmsg_type != NLMSG_ERROR)
			return 0;
		err = NLMSG_DATA(&reply->n);
		return err->error;
	}
}

static int family_id(int fd)
{
	struct msg m, r;
	struct nlattr *a;
	int len, ret;

	start(&m, GENL_ID_CTRL, CTRL_CMD_GETFAMILY);
	m.n.nlmsg_flags = NLM_F_REQUEST;
	put_attr(&m, CTRL_ATTR_FAMILY_NAME, VDPA_GENL_NAME, sizeof(VDPA_GENL_NAME));
	ret = talk(fd, &m, &r);
	if (ret)
		return ret;
	len = r.n.nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN);
	for (a = (struct nlattr *)r.buf; len >= NLA_HDRLEN && a->nla_len >= NLA_HDRLEN;
	     len -= NLA_ALIGN(a->nla_len),
	     a = (struct nlattr *)((char *)a + NLA_ALIGN(a->nla_len)))
		if (a->nla_type == CTRL_ATTR_FAMILY_ID)
			return *(uint16_t *)((char *)a + NLA_HDRLEN);
	return -ENOENT;
}

static int print_usage(void)
{
	fprintf(stderr, "usage: vdpa add MGMTDEV NAME [FEATURES] | vdpa del NAME\n");
	return 2;
}

int main(int argc, char **argv)
{
	struct sockaddr_nl me = { .nl_family = AF_NETLINK };
	struct msg m, r;
	unsigned long long features;
	int fd, family, ret;

	if (argc < 3)
		return print_usage();
	fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_GENERIC);
	if (fd < 0 || bind(fd, (struct sockaddr *)&me, sizeof(me)) < 0) {
		perror("vdpa: netlink socket");
		return 1;
	}
	family = family_id(fd);
	if (family < 0) {
		fprintf(stderr, "vdpa: no vdpa netlink family: %s\n", strerror(-family));
		return 1;
	}
	if (!strcmp(argv[1], "add") && (argc == 4 || argc == 5)) {
		start(&m, family, VDPA_CMD_DEV_NEW);
		put_attr(&m, VDPA_ATTR_MGMTDEV_DEV_NAME, argv[2], strlen(argv[2]) + 1);
		put_attr(&m, VDPA_ATTR_DEV_NAME, argv[3], strlen(argv[3]) + 1);
		if (argc == 5) {
			features = strtoull(argv[4], NULL, 0);
			put_attr(&m, VDPA_ATTR_DEV_FEATURES, &features, sizeof(features));
		}
	} else if (!strcmp(argv[1], "del") && argc == 3) {
		start(&m, family, VDPA_CMD_DEV_DEL);
		put_attr(&m, VDPA_ATTR_DEV_NAME, argv[2], strlen(argv[2]) + 1);
	} else {
		return print_usage();
	}
	ret = talk(fd, &m, &r);
	if (ret) {
		fprintf(stderr, "vdpa %s: %s\n", argv[1], strerror(-ret));
		return 1;
	}
	return 0;
}
