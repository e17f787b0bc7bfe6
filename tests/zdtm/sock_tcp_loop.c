/* TCP connections with both ends inside the container, over loopback and over the
 * container's own IP: data sent but not acked or not even sent (the receiver is not
 * reading: its receive queue and the sender's send queue are full), data received and
 * not read, and a half-closed connection (one side shut down its writing half; the
 * other has the data and the FIN unread).  After restore every byte arrives once, in
 * order, the FIN after it, and the connections carry new data both ways. */
#include "zdtmlib.h"
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

struct pair {
	const char *name;
	int a, b;
	uint64_t ab_sent, ab_recv; /* stream offsets a->b */
	uint64_t ba_sent, ba_recv; /* and b->a */
};

static unsigned char pat(uint64_t off, int dir) { return (unsigned char)(off * 7 + (off >> 8) + dir * 101); }

static void set_nb(int fd, int on)
{
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* Write the pattern until the kernel takes no more (or `max` bytes). */
static uint64_t fill(int fd, uint64_t *sent, int dir, uint64_t max)
{
	unsigned char buf[4096];
	uint64_t n0 = *sent;
	set_nb(fd, 1);
	while (*sent - n0 < max) {
		size_t len = sizeof(buf);
		if (max - (*sent - n0) < len) len = max - (*sent - n0);
		for (size_t i = 0; i < len; i++) buf[i] = pat(*sent + i, dir);
		ssize_t w = write(fd, buf, len);
		if (w < 0) {
			if (errno == EAGAIN) break;
			fail("write");
		}
		*sent += w;
	}
	set_nb(fd, 0);
	return *sent - n0;
}

/* Move data both ways until each side got everything the other sent (plus `more`). */
static void pump(struct pair *p, uint64_t more, const char *when)
{
	uint64_t ab_goal = p->ab_sent + more, ba_goal = p->ba_sent + more;
	time_t deadline = time(NULL) + 30;
	unsigned char buf[8192];
	set_nb(p->a, 1);
	set_nb(p->b, 1);
	while (p->ab_recv < ab_goal || p->ba_recv < ba_goal) {
		if (time(NULL) > deadline)
			fail("%s %s: stuck at a->b %llu/%llu b->a %llu/%llu", p->name, when,
			     (unsigned long long)p->ab_recv, (unsigned long long)ab_goal,
			     (unsigned long long)p->ba_recv, (unsigned long long)ba_goal);
		struct pollfd pf[2] = {{.fd = p->a, .events = POLLIN}, {.fd = p->b, .events = POLLIN}};
		if (p->ab_sent < ab_goal) pf[0].events |= POLLOUT;
		if (p->ba_sent < ba_goal) pf[1].events |= POLLOUT;
		if (poll(pf, 2, 1000) < 0) fail("poll");
		for (int s = 0; s < 2; s++) {
			int fd = s ? p->b : p->a;
			uint64_t *sent = s ? &p->ba_sent : &p->ab_sent, goal = s ? ba_goal : ab_goal;
			uint64_t *recv = s ? &p->ab_recv : &p->ba_recv;
			int dir_out = s, dir_in = !s;
			if (pf[s].revents & (POLLERR | POLLHUP)) fail("%s %s: error/hangup on %c", p->name, when, s ? 'b' : 'a');
			if ((pf[s].revents & POLLOUT) && *sent < goal) {
				size_t len = sizeof(buf);
				if (goal - *sent < len) len = goal - *sent;
				for (size_t i = 0; i < len; i++) buf[i] = pat(*sent + i, dir_out);
				ssize_t w = write(fd, buf, len);
				if (w < 0 && errno != EAGAIN) fail("%s %s: write", p->name, when);
				if (w > 0) *sent += w;
			}
			if (pf[s].revents & POLLIN) {
				ssize_t r = read(fd, buf, sizeof(buf));
				if (r == 0) fail("%s %s: unexpected EOF on %c", p->name, when, s ? 'b' : 'a');
				if (r < 0 && errno != EAGAIN) fail("%s %s: read", p->name, when);
				for (ssize_t i = 0; i < r; i++)
					if (buf[i] != pat(*recv + i, dir_in))
						fail("%s %s: byte %llu differs", p->name, when, (unsigned long long)(*recv + i));
				if (r > 0) *recv += r;
			}
		}
	}
	set_nb(p->a, 0);
	set_nb(p->b, 0);
}

static void connect_pair(struct pair *p, const char *name, const char *ip, int small)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t len = sizeof(sa);
	memset(p, 0, sizeof(*p));
	p->name = name;
	inet_pton(AF_INET, ip, &sa.sin_addr);
	int l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (void *)&sa, sizeof(sa)) || listen(l, 4)) fail("%s: listener", name);
	getsockname(l, (void *)&sa, &len);
	p->a = socket(AF_INET, SOCK_STREAM, 0);
	if (small) {
		int v = 16384;
		setsockopt(p->a, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
	}
	if (connect(p->a, (void *)&sa, sizeof(sa))) fail("%s: connect", name);
	p->b = accept(l, NULL, NULL);
	if (p->b < 0) fail("%s: accept", name);
	if (small) {
		int v = 16384;
		setsockopt(p->b, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
	}
	close(l);
}

static void addr_pair(int fd, char *buf, size_t n)
{
	struct sockaddr_in l, r;
	socklen_t ll = sizeof(l), rl = sizeof(r);
	getsockname(fd, (void *)&l, &ll);
	getpeername(fd, (void *)&r, &rl);
	char a[32], b[32];
	inet_ntop(AF_INET, &l.sin_addr, a, sizeof(a));
	inet_ntop(AF_INET, &r.sin_addr, b, sizeof(b));
	snprintf(buf, n, "%s:%d-%s:%d", a, ntohs(l.sin_port), b, ntohs(r.sin_port));
}

static int tcp_state(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len)) fail("TCP_INFO");
	return ti.tcpi_state;
}

static int container_ip(char *buf, size_t n)
{
	struct ifaddrs *ifa, *i;
	if (getifaddrs(&ifa)) return 0;
	for (i = ifa; i; i = i->ifa_next)
		if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET && !(i->ifa_flags & IFF_LOOPBACK)) {
			inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, buf, n);
			freeifaddrs(ifa);
			return 1;
		}
	freeifaddrs(ifa);
	return 0;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	char ip[64];
	struct pair p[4];
	int np = 0;
	connect_pair(&p[np++], "loopback", "127.0.0.1", 1);
	if (container_ip(ip, sizeof(ip)))
		connect_pair(&p[np++], "container-ip", ip, 1);
	else
		test_msg("no container IP: skipping that pair\n");
	struct pair *h = &p[np];
	connect_pair(&p[np++], "half-closed", "127.0.0.1", 0);

	for (int i = 0; i < np; i++) {
		struct pair *q = &p[i];
		pump(q, 50000, "before");
		if (q == h) {
			/* a sends 3000 bytes then its FIN; b reads nothing */
			fill(q->a, &q->ab_sent, 0, 3000);
			if (shutdown(q->a, SHUT_WR)) fail("shutdown");
			continue;
		}
		/* b does not read: a's data fills b's receive queue and a's send queue */
		uint64_t n = fill(q->a, &q->ab_sent, 0, 1 << 24);
		/* a does not read either: 1000 bytes wait in its receive queue */
		fill(q->b, &q->ba_sent, 1, 1000);
		test_msg("%s: %llu bytes queued a->b\n", q->name, (unsigned long long)n);
	}
	usleep(200000); /* let the FIN and ACKs land: FIN_WAIT2 / CLOSE_WAIT */
	char before[4][96];
	for (int i = 0; i < np; i++) addr_pair(p[i].a, before[i], sizeof(before[i]));
	if (tcp_state(h->a) != TCP_FIN_WAIT2 || tcp_state(h->b) != TCP_CLOSE_WAIT)
		fail("half-closed pair not in FIN_WAIT2/CLOSE_WAIT before the dump: %d/%d", tcp_state(h->a), tcp_state(h->b));

	test_ready();
	test_waitsig();

	for (int i = 0; i < np; i++) {
		char now[96];
		addr_pair(p[i].a, now, sizeof(now));
		if (strcmp(now, before[i])) fail("%s: addresses %s became %s", p[i].name, before[i], now);
	}
	if (tcp_state(h->a) != TCP_FIN_WAIT2) fail("half-closed: a is in state %d", tcp_state(h->a));
	if (tcp_state(h->b) != TCP_CLOSE_WAIT) fail("half-closed: b is in state %d", tcp_state(h->b));
	for (int i = 0; i < np; i++) {
		struct pair *q = &p[i];
		if (q == h) continue;
		pump(q, 0, "draining");
		pump(q, 300000, "after");
	}
	/* half-closed: b gets the 3000+ bytes, then EOF; b's direction still works */
	{
		unsigned char buf[4096];
		ssize_t r;
		while ((r = read(h->b, buf, sizeof(buf))) > 0) {
			for (ssize_t i = 0; i < r; i++)
				if (buf[i] != pat(h->ab_recv + i, 0)) fail("half-closed: byte %llu", (unsigned long long)(h->ab_recv + i));
			h->ab_recv += r;
		}
		if (r < 0) fail("half-closed: read");
		if (h->ab_recv != h->ab_sent) fail("half-closed: got %llu of %llu before EOF", (unsigned long long)h->ab_recv, (unsigned long long)h->ab_sent);
		if (write(h->b, "bye", 3) != 3) fail("half-closed: b write");
		shutdown(h->b, SHUT_WR);
		char got[8] = {0};
		if (read(h->a, got, sizeof(got)) != 3 || memcmp(got, "bye", 3)) fail("half-closed: a did not get bye");
		if (read(h->a, got, sizeof(got)) != 0) fail("half-closed: a did not get EOF");
	}
	pass();
}
