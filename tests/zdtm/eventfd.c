/* eventfd: 64-bit counters, EFD_SEMAPHORE and EFD_NONBLOCK, a full counter, one eventfd
 * shared with a child that sleeps in read() on it across the checkpoint. */
#include "zdtmlib.h"
#include <poll.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

static uint64_t rd(int fd, const char *what)
{
	uint64_t v;
	if (read(fd, &v, 8) != 8) fail("read %s", what);
	return v;
}

static void wr(int fd, uint64_t v, const char *what)
{
	if (write(fd, &v, 8) != 8) fail("write %s", what);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	int big = eventfd(0, 0);
	wr(big, 0x123456789abcULL, "big");
	int sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK | EFD_CLOEXEC);
	int full = eventfd(0, EFD_NONBLOCK);
	wr(full, 0xfffffffffffffffeULL, "full");
	int zero = eventfd(0, EFD_NONBLOCK);
	int ping = eventfd(0, 0), pong = eventfd(0, 0);
	if (big < 0 || sem < 0 || full < 0 || zero < 0 || ping < 0 || pong < 0) fail("eventfd");
	pid_t c = fork();
	if (c == 0) {
		/* blocked in read() while the container is dumped and restored */
		uint64_t v;
		if (read(ping, &v, 8) != 8) _exit(2);
		v += 1;
		if (write(pong, &v, 8) != 8) _exit(3);
		_exit(0);
	}
	usleep(100000); /* let the child block */
	test_ready();
	test_waitsig();

	if (fcntl(big, F_GETFL) & O_NONBLOCK) fail("big: O_NONBLOCK appeared");
	if (fcntl(big, F_GETFD) & FD_CLOEXEC) fail("big: FD_CLOEXEC appeared");
	if (!(fcntl(sem, F_GETFL) & O_NONBLOCK)) fail("sem: O_NONBLOCK lost");
	if (!(fcntl(sem, F_GETFD) & FD_CLOEXEC)) fail("sem: FD_CLOEXEC lost");

	uint64_t v = rd(big, "big");
	if (v != 0x123456789abcULL) fail("big counter %#llx", (unsigned long long)v);
	struct pollfd pf = {.fd = big, .events = POLLIN};
	if (poll(&pf, 1, 0) != 0) fail("big readable after reading it");

	for (int i = 0; i < 3; i++)
		if ((v = rd(sem, "sem")) != 1) fail("semaphore read %d gave %llu", i, (unsigned long long)v);
	if (read(sem, &v, 8) != -1 || errno != EAGAIN) fail("semaphore not empty after 3 reads");

	v = 1;
	if (write(full, &v, 8) != -1 || errno != EAGAIN) fail("full counter accepted a write");
	if ((v = rd(full, "full")) != 0xfffffffffffffffeULL) fail("full counter %#llx", (unsigned long long)v);

	if (read(zero, &v, 8) != -1 || errno != EAGAIN) fail("zero counter readable");

	/* the child shares ping/pong with us: it wakes up and answers */
	wr(ping, 41, "ping");
	if ((v = rd(pong, "pong")) != 42) fail("child answered %llu", (unsigned long long)v);
	int st;
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("child status %#x", st);
	pass();
}
