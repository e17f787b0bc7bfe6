/* File descriptors in flight (SCM_RIGHTS messages in unix socket queues): a regular
 * file with an offset (also still open in the task: one open file description), a
 * pipe with data in it, the end of another socketpair with its own queued data, an
 * eventfd, and a datagram socket passed over a datagram socket.  After restore the
 * files arrive in order, with the data they came with, and are the same files. */
#include "zdtmlib.h"
#include <stddef.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>

static void send_fds(int s, const char *data, size_t len, int *fds, int n)
{
	char cbuf[CMSG_SPACE(sizeof(int) * 8)];
	struct iovec iov = {(void *)data, len};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			    .msg_controllen = CMSG_SPACE(sizeof(int) * n)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int) * n);
	memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
	if (sendmsg(s, &mh, 0) != (ssize_t)len)
		fail("sendmsg with fds");
}

/* Read exactly len bytes; return how many fds came with them. */
static int recv_fds(int s, char *buf, size_t len, int *fds, int max)
{
	char cbuf[CMSG_SPACE(sizeof(int) * 8)];
	struct iovec iov = {buf, len};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	ssize_t n = recvmsg(s, &mh, MSG_DONTWAIT);
	if (n != (ssize_t)len)
		fail("recvmsg: %zd of %zu bytes", n, len);
	if (mh.msg_flags & MSG_CTRUNC)
		fail("control data truncated");
	struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
	if (!c)
		return 0;
	if (c->cmsg_type != SCM_RIGHTS)
		fail("not SCM_RIGHTS");
	int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
	if (k > max)
		fail("too many fds");
	memcpy(fds, CMSG_DATA(c), sizeof(int) * k);
	return k;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	char buf[64];

	int f = open("scm.data", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (f < 0 || write(f, "0123456789", 10) != 10 || lseek(f, 4, SEEK_SET) != 4)
		fail("data file");
	int p[2];
	if (pipe(p) || write(p[1], "in-the-pipe", 11) != 11)
		fail("pipe");
	int inner[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, inner) || write(inner[1], "inner-data", 10) != 10)
		fail("inner socketpair");
	int ev = eventfd(42, EFD_NONBLOCK);
	int dg[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, dg))
		fail("dgram pair");

	int sp[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp))
		fail("socketpair");
	if (write(sp[0], "head", 4) != 4)
		fail("head");
	int two[2] = {f, p[0]};
	send_fds(sp[0], "msg1", 4, two, 2);
	int three[3] = {inner[0], ev, dg[1]};
	send_fds(sp[0], "M2", 2, three, 3);
	if (write(sp[0], "tail", 4) != 4)
		fail("tail");
	/* a listener with a connection waiting, passed on (socket activation style) */
	struct sockaddr_un la;
	memset(&la, 0, sizeof(la));
	la.sun_family = AF_UNIX;
	memcpy(la.sun_path, "\0zdtm-scm-l", 11);
	socklen_t lal = offsetof(struct sockaddr_un, sun_path) + 11;
	int lst = socket(AF_UNIX, SOCK_STREAM, 0);
	if (bind(lst, (struct sockaddr *)&la, lal) || listen(lst, 2))
		fail("listener");
	int lc = socket(AF_UNIX, SOCK_STREAM, 0);
	if (connect(lc, (struct sockaddr *)&la, lal))
		fail("connect");
	send_fds(sp[0], "L", 1, &lst, 1);
	close(lst);
	/* the inner socket, the pipe's read end, the eventfd and dg[1] live only in flight */
	close(inner[0]);
	close(p[0]);
	close(ev);
	close(dg[1]);
	/* a datagram socket in flight over a datagram socketpair */
	int q[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, q))
		fail("q");
	send_fds(q[0], "dgram-fd", 8, &dg[0], 1);
	if (send(dg[0], "to-dg1", 6, 0) != 6)
		fail("dg send");
	close(dg[0]);

	test_ready();
	test_waitsig();

	int fds[8];
	if (recv_fds(sp[1], buf, 4, fds, 8) != 0 || memcmp(buf, "head", 4))
		fail("head");
	if (recv_fds(sp[1], buf, 4, fds, 8) != 2 || memcmp(buf, "msg1", 4))
		fail("msg1 and its two fds");
	int rf = fds[0], rp = fds[1];
	if (recv_fds(sp[1], buf, 2, fds, 8) != 3 || memcmp(buf, "M2", 2))
		fail("M2 and its three fds");
	int ri = fds[0], rev = fds[1], rdg = fds[2];
	if (recv_fds(sp[1], buf, 4, fds, 8) != 0 || memcmp(buf, "tail", 4))
		fail("tail");
	if (recv_fds(sp[1], buf, 1, fds, 8) != 1 || buf[0] != 'L')
		fail("the listener");
	int rl = fds[0];
	int acc = accept(rl, NULL, NULL);
	if (acc < 0)
		fail("the waiting connection on the passed listener");
	if (write(lc, "via-L", 5) != 5 || read(acc, buf, 5) != 5 || memcmp(buf, "via-L", 5))
		fail("data over the passed listener's connection");

	/* the file: same open file description (offset shared with f) */
	if (lseek(rf, 0, SEEK_CUR) != 4)
		fail("offset of the passed file %ld", (long)lseek(rf, 0, SEEK_CUR));
	if (read(rf, buf, 3) != 3 || memcmp(buf, "456", 3))
		fail("passed file contents");
	if (lseek(f, 0, SEEK_CUR) != 7)
		fail("offset not shared with the task's own fd");
	/* the pipe: its data, and still the pipe whose write end we hold */
	if (read(rp, buf, 11) != 11 || memcmp(buf, "in-the-pipe", 11))
		fail("pipe data");
	if (write(p[1], "z", 1) != 1 || read(rp, buf, 1) != 1 || buf[0] != 'z')
		fail("pipe broken");
	/* the inner socket: its queued data, and its peer */
	if (read(ri, buf, 10) != 10 || memcmp(buf, "inner-data", 10))
		fail("inner socket data");
	if (write(inner[1], "y", 1) != 1 || read(ri, buf, 1) != 1 || buf[0] != 'y')
		fail("inner socket broken");
	uint64_t cnt;
	if (read(rev, &cnt, 8) != 8 || cnt != 42)
		fail("eventfd count");
	/* the datagram socket that travelled over q */
	if (recv_fds(q[1], buf, 8, fds, 8) != 1 || memcmp(buf, "dgram-fd", 8))
		fail("dgram-fd");
	int rdg0 = fds[0];
	if (send(rdg0, "ping", 4, 0) != 4 || recv(rdg, buf, 10, MSG_DONTWAIT) != 6 || memcmp(buf, "to-dg1", 6))
		fail("dgram pair in flight: queued datagram");
	if (recv(rdg, buf, 10, MSG_DONTWAIT) != 4 || memcmp(buf, "ping", 4))
		fail("dgram pair in flight: new datagram");
	unlink("scm.data");
	pass();
}
