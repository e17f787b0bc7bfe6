/* epoll: ready and idle targets with their data, level- and edge-triggered, a fired
 * one-shot item, an item whose fd was closed while a dup keeps the file, one whose fd
 * number now holds another file, an item whose file only a child still holds, a nested
 * epoll, and the fd numbers MOD/DEL use. */
#include "zdtmlib.h"
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

enum { D_PIPE = 0x1111, D_IDLE = 0x2222, D_EFD = 0x3333, D_ET = 0x4444, D_OUT = 0x5555,
       D_DUP = 0x6666, D_ONESHOT = 0x7777, D_CHILD = 0x8888, D_INNER = 0x9999, D_IN_PIPE = 0xaaaa,
       D_REUSED = 0xbbbb };

static void add(int ep, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = {.events = events, .data.u64 = data};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)) fail("EPOLL_CTL_ADD fd %d", fd);
}

/* the data of every ready item, as a bitmask over the low nibble of data>>12 */
static unsigned ready(int ep)
{
	struct epoll_event evs[32];
	int n = epoll_wait(ep, evs, 32, 0);
	if (n < 0) fail("epoll_wait");
	unsigned set = 0;
	for (int i = 0; i < n; i++) set |= 1u << (evs[i].data.u64 >> 12);
	return set;
}
#define BIT(d) (1u << ((d) >> 12))

int main(int argc, char **argv)
{
	test_init(argc, argv);
	int p[2], q[2], o[2], r[2], c[2], ip[2], u[2];
	if (pipe(p) || pipe(q) || pipe(o) || pipe(r) || pipe(c) || pipe(ip) || pipe(u)) fail("pipe");
	int efd = eventfd(2, 0), et = eventfd(0, EFD_NONBLOCK);
	int ep = epoll_create1(EPOLL_CLOEXEC), inner = epoll_create1(0);
	if (efd < 0 || et < 0 || ep < 0 || inner < 0) fail("create");
	write(p[1], "data", 4);
	write(r[1], "x", 1);
	add(ep, p[0], EPOLLIN, D_PIPE);
	add(ep, q[0], EPOLLIN, D_IDLE);
	add(ep, efd, EPOLLIN, D_EFD);
	add(ep, et, EPOLLIN | EPOLLET, D_ET);
	add(ep, o[1], EPOLLOUT, D_OUT);
	int d = dup(efd);
	add(ep, d, EPOLLIN | EPOLLRDHUP, D_DUP);
	close(d); /* the item stays: efd keeps the file */
	add(ep, r[0], EPOLLIN | EPOLLONESHOT, D_ONESHOT);
	add(ep, c[0], EPOLLIN, D_CHILD);
	add(inner, ip[0], EPOLLIN, D_IN_PIPE);
	add(ep, inner, EPOLLIN, D_INNER);
	/* the item of u[0] outlives its number: a dup keeps the pipe, an eventfd takes the number */
	add(ep, u[0], EPOLLIN, D_REUSED);
	int ukeep = dup(u[0]);
	int reused = eventfd(5, 0);
	if (dup2(reused, u[0]) != u[0]) fail("dup2");
	close(reused);
	reused = u[0];
	pid_t child = fork();
	if (child == 0) {
		pause();
		_exit(0);
	}
	close(c[0]); /* only the child holds the read end now */
	unsigned want = BIT(D_PIPE) | BIT(D_EFD) | BIT(D_OUT) | BIT(D_DUP) | BIT(D_ONESHOT);
	unsigned got = ready(ep); /* fires (and disarms) the one-shot item */
	if (got != want) fail("before: ready %#x, want %#x", got, want);
	want &= ~BIT(D_ONESHOT);
	test_ready();
	test_waitsig();

	if (!(fcntl(ep, F_GETFD) & FD_CLOEXEC)) fail("EPOLL_CLOEXEC lost");
	if ((got = ready(ep)) != want) fail("after restore: ready %#x, want %#x", got, want);
	struct epoll_event ev;
	int n = epoll_wait(ep, &ev, 1, 0);
	if (n != 1) fail("epoll_wait gave %d", n);

	/* idle targets wake up when they get data */
	write(q[1], "y", 1);
	uint64_t one = 1;
	write(et, &one, 8);
	write(c[1], "z", 1);
	write(ip[1], "w", 1);
	write(u[1], "v", 1);
	want |= BIT(D_IDLE) | BIT(D_ET) | BIT(D_CHILD) | BIT(D_INNER) | BIT(D_REUSED);
	if ((got = ready(ep)) != want) fail("after writes: ready %#x, want %#x", got, want);
	/* edge-triggered: reported once */
	if (ready(ep) & BIT(D_ET)) fail("edge-triggered item reported twice");
	/* the inner set reports its own target */
	struct epoll_event iev;
	if (epoll_wait(inner, &iev, 1, 0) != 1 || iev.data.u64 != D_IN_PIPE) fail("inner set");

	/* items are keyed by the dumped fd numbers */
	struct epoll_event mod = {.events = EPOLLIN, .data.u64 = D_ONESHOT};
	if (epoll_ctl(ep, EPOLL_CTL_MOD, r[0], &mod)) fail("MOD of the one-shot item");
	if (!(ready(ep) & BIT(D_ONESHOT))) fail("re-armed one-shot item not ready");
	if (epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL)) fail("DEL p[0]");
	if (epoll_ctl(ep, EPOLL_CTL_DEL, p[0], NULL) != -1 || errno != ENOENT) fail("second DEL p[0]");
	if (ready(ep) & BIT(D_PIPE)) fail("deleted item still reported");
	if (epoll_ctl(ep, EPOLL_CTL_ADD, efd, &mod) != -1 || errno != EEXIST) fail("efd item missing");
	/* (eventfd, reused) is not an item, (pipe, reused) is: DEL finds nothing, ADD works */
	if (epoll_ctl(ep, EPOLL_CTL_DEL, reused, NULL) != -1 || errno != ENOENT) fail("DEL of a reused number");
	if (epoll_ctl(ep, EPOLL_CTL_ADD, reused, &mod)) fail("ADD of the file now at the reused number");
	char ch;
	if (read(ukeep, &ch, 1) != 1 || ch != 'v') fail("ukeep");
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	/* the child's exit dropped the last reference: its item is gone */
	if (ready(ep) & BIT(D_CHILD)) fail("item of a closed file still reported");
	pass();
}
