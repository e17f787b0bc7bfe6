/* A TCP connection from the container to an echo server outside it (args: IP PORT;
 * tests/root/test_sockets.py runs one in a client namespace on the LAN).  Before the
 * dump the test stops reading: the echoed data fills its receive queue, the server's
 * send queue, then its own send queue.  After restore every byte comes back once,
 * in order, and the connection carries new data.  With no args the echo server is a
 * child process inside the container, over loopback. */
#include "zdtmlib.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

static unsigned char pat(uint64_t off) { return (unsigned char)(off * 13 + (off >> 10)); }

static void echo_child(int l)
{
	int c = accept(l, NULL, NULL);
	char buf[65536];
	ssize_t r;
	while ((r = read(c, buf, sizeof(buf))) > 0)
		for (ssize_t o = 0; o < r;) {
			ssize_t w = write(c, buf + o, r - o);
			if (w <= 0) _exit(1);
			o += w;
		}
	_exit(0);
}

static uint64_t sent, got;

static void exchange(int fd, uint64_t more, int read_back, const char *when)
{
	uint64_t goal = sent + more;
	unsigned char buf[16384];
	time_t deadline = time(NULL) + 60;
	fcntl(fd, F_SETFL, O_NONBLOCK);
	while (sent < goal || (read_back && got < sent)) {
		if (time(NULL) > deadline)
			fail("%s: stuck, sent %llu/%llu got %llu", when, (unsigned long long)sent, (unsigned long long)goal, (unsigned long long)got);
		struct pollfd pf = {.fd = fd, .events = (read_back ? POLLIN : 0) | (sent < goal ? POLLOUT : 0)};
		int n = poll(&pf, 1, read_back ? 1000 : 300);
		if (n < 0) fail("poll");
		if (n == 0 && !read_back) break; /* nothing moves: queues full */
		if (pf.revents & (POLLERR | POLLHUP)) fail("%s: connection error", when);
		if ((pf.revents & POLLOUT) && sent < goal) {
			size_t len = sizeof(buf);
			if (goal - sent < len) len = goal - sent;
			for (size_t i = 0; i < len; i++) buf[i] = pat(sent + i);
			ssize_t w = write(fd, buf, len);
			if (w > 0) sent += w;
			else if (errno != EAGAIN) fail("%s: write", when);
		}
		if (pf.revents & POLLIN) {
			ssize_t r = read(fd, buf, sizeof(buf));
			if (r == 0) fail("%s: EOF from the server", when);
			if (r < 0 && errno != EAGAIN) fail("%s: read", when);
			for (ssize_t i = 0; i < r; i++)
				if (buf[i] != pat(got + i)) fail("%s: byte %llu differs", when, (unsigned long long)(got + i));
			if (r > 0) got += r;
		}
	}
	fcntl(fd, F_SETFL, 0);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	pid_t child = -1;
	if (argc >= 3) {
		inet_pton(AF_INET, argv[1], &sa.sin_addr);
		sa.sin_port = htons(atoi(argv[2]));
	} else {
		socklen_t len = sizeof(sa);
		inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
		int l = socket(AF_INET, SOCK_STREAM, 0);
		if (bind(l, (void *)&sa, sizeof(sa)) || listen(l, 1)) fail("listen");
		getsockname(l, (void *)&sa, &len);
		child = fork();
		if (child == 0) echo_child(l);
		close(l);
	}
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(fd, (void *)&sa, sizeof(sa))) fail("connect to %s:%d", inet_ntoa(sa.sin_addr), ntohs(sa.sin_port));
	exchange(fd, 100000, 1, "before");
	/* stop reading: fill every queue on the way */
	exchange(fd, 1 << 26, 0, "filling");
	test_msg("sent %llu, got back %llu before the dump\n", (unsigned long long)sent, (unsigned long long)got);
	test_ready();
	test_waitsig();
	exchange(fd, 0, 1, "draining");
	exchange(fd, 200000, 1, "after");
	shutdown(fd, SHUT_WR);
	char c;
	if (read(fd, &c, 1) != 0) fail("no EOF after shutdown");
	if (child > 0) {
		int st;
		waitpid(child, &st, 0);
		if (!WIFEXITED(st) || WEXITSTATUS(st)) fail("echo child status %#x", st);
	}
	pass();
}
