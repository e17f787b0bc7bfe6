/* Socket options of a TCP connection and of its fds survive: TCP_NODELAY, TCP_CORK
 * off, keepalive and its timers, TCP_USER_TIMEOUT, TCP_CONGESTION, SO_LINGER,
 * SO_PRIORITY, IP_TOS, IP_TTL, SO_MARK, SO_RCVTIMEO, fixed SO_SNDBUF/SO_RCVBUF and
 * autotuned ones, TCP_NOTSENT_LOWAT, SO_OOBINLINE, SO_REUSEADDR on an accepted
 * socket, O_NONBLOCK and FD_CLOEXEC, a dup()ed fd sharing the socket. */
#include "zdtmlib.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

struct opt { const char *name; int level, opt, val; int fd_is_client; };

static int getint(int fd, int level, int opt)
{
	int v = -1;
	socklen_t len = sizeof(v);
	if (getsockopt(fd, level, opt, &v, &len)) fail("getsockopt %d/%d", level, opt);
	return v;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t len = sizeof(sa);
	inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
	int one = 1;
	int l = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(l, (void *)&sa, sizeof(sa)) || listen(l, 1)) fail("listen");
	getsockname(l, (void *)&sa, &len);
	int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (connect(c, (void *)&sa, sizeof(sa))) fail("connect");
	int s = accept4(l, NULL, NULL, SOCK_NONBLOCK);
	if (s < 0) fail("accept");
	close(l);

	struct opt opts[] = {
		{"TCP_NODELAY", IPPROTO_TCP, TCP_NODELAY, 1, 1},
		{"SO_KEEPALIVE", SOL_SOCKET, SO_KEEPALIVE, 1, 1},
		{"TCP_KEEPIDLE", IPPROTO_TCP, TCP_KEEPIDLE, 33, 1},
		{"TCP_KEEPINTVL", IPPROTO_TCP, TCP_KEEPINTVL, 7, 1},
		{"TCP_KEEPCNT", IPPROTO_TCP, TCP_KEEPCNT, 4, 1},
		{"TCP_USER_TIMEOUT", IPPROTO_TCP, TCP_USER_TIMEOUT, 12345, 1},
		{"SO_PRIORITY", SOL_SOCKET, SO_PRIORITY, 5, 1},
		{"IP_TOS", IPPROTO_IP, IP_TOS, 0x28, 0},
		{"IP_TTL", IPPROTO_IP, IP_TTL, 17, 0},
		{"SO_MARK", SOL_SOCKET, SO_MARK, 0x1234, 0},
		{"TCP_NOTSENT_LOWAT", IPPROTO_TCP, TCP_NOTSENT_LOWAT, 65536, 0},
		{"SO_OOBINLINE", SOL_SOCKET, SO_OOBINLINE, 1, 0},
		{"SO_SNDBUF", SOL_SOCKET, SO_SNDBUF, 40000, 0},
		{"SO_RCVBUF", SOL_SOCKET, SO_RCVBUF, 30000, 1},
	};
	int n = sizeof(opts) / sizeof(opts[0]);
	for (int i = 0; i < n; i++) {
		int fd = opts[i].fd_is_client ? c : s;
		if (setsockopt(fd, opts[i].level, opts[i].opt, &opts[i].val, sizeof(int))) fail("set %s", opts[i].name);
	}
	struct linger lg = {.l_onoff = 1, .l_linger = 9};
	setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	struct timeval tv = {.tv_sec = 3, .tv_usec = 250000};
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char cc[16] = "reno";
	if (setsockopt(c, IPPROTO_TCP, TCP_CONGESTION, cc, strlen(cc))) fail("TCP_CONGESTION reno");
	int want[16];
	for (int i = 0; i < n; i++) want[i] = getint(opts[i].fd_is_client ? c : s, opts[i].level, opts[i].opt);
	int c_sndbuf = getint(c, SOL_SOCKET, SO_SNDBUF); /* autotuned, not set */
	int s_reuse = getint(s, SOL_SOCKET, SO_REUSEADDR);
	struct timeval tv1;
	len = sizeof(tv1);
	getsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv1, &len); /* rounded to jiffies */
	int d = dup(s);
	if (write(c, "abc", 3) != 3) fail("write");

	test_ready();
	test_waitsig();

	for (int i = 0; i < n; i++) {
		int got = getint(opts[i].fd_is_client ? c : s, opts[i].level, opts[i].opt);
		if (got != want[i]) fail("%s: %d became %d", opts[i].name, want[i], got);
	}
	struct linger lg2;
	len = sizeof(lg2);
	getsockopt(c, SOL_SOCKET, SO_LINGER, &lg2, &len);
	if (!lg2.l_onoff || lg2.l_linger != 9) fail("SO_LINGER %d/%d", lg2.l_onoff, lg2.l_linger);
	struct timeval tv2;
	len = sizeof(tv2);
	getsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv2, &len);
	if (tv2.tv_sec != tv1.tv_sec || tv2.tv_usec != tv1.tv_usec) fail("SO_RCVTIMEO %ld.%06ld", (long)tv2.tv_sec, (long)tv2.tv_usec);
	char cc2[16] = {0};
	len = sizeof(cc2);
	getsockopt(c, IPPROTO_TCP, TCP_CONGESTION, cc2, &len);
	if (strcmp(cc2, "reno")) fail("TCP_CONGESTION %s", cc2);
	if (getint(s, SOL_SOCKET, SO_REUSEADDR) != s_reuse) fail("accepted SO_REUSEADDR %d->%d", s_reuse, getint(s, SOL_SOCKET, SO_REUSEADDR));
	int now_sndbuf = getint(c, SOL_SOCKET, SO_SNDBUF);
	if (now_sndbuf < c_sndbuf / 2) fail("autotuned SO_SNDBUF %d -> %d", c_sndbuf, now_sndbuf);
	if (!(fcntl(s, F_GETFL) & O_NONBLOCK)) fail("O_NONBLOCK lost");
	if (!(fcntl(c, F_GETFD) & FD_CLOEXEC)) fail("FD_CLOEXEC lost");
	if (fcntl(s, F_GETFD) & FD_CLOEXEC) fail("FD_CLOEXEC appeared");
	/* d shares s: the same socket (and file status flags) */
	if (!(fcntl(d, F_GETFL) & O_NONBLOCK)) fail("dup lost the shared O_NONBLOCK");
	fcntl(s, F_SETFL, 0);
	char buf[4] = {0};
	if (read(d, buf, 3) != 3 || strcmp(buf, "abc")) fail("data through the dup '%s'", buf);
	if (write(d, "xy", 2) != 2) fail("write through the dup");
	if (read(c, buf, 2) != 2 || memcmp(buf, "xy", 2)) fail("data back");
	pass();
}
