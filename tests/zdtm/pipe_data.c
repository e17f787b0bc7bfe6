/* A pipe with unread data in it, held by parent and child; data intact and ordered. */
#include "zdtmlib.h"
#include <sys/wait.h>

int main(int argc, char **argv)
{
	test_init(argc, argv);
	int p[2], q[2];
	if (pipe(p) || pipe2(q, O_NONBLOCK)) fail("pipe");
	char buf[20000];
	for (int i = 0; i < (int)sizeof buf; i++) buf[i] = (char)(i * 13);
	if (write(p[1], buf, sizeof buf) != sizeof buf) fail("write");
	if (write(q[1], "tail", 4) != 4) fail("write q");
	pid_t c = fork();
	if (c == 0) {
		/* child keeps both ends open and waits */
		pause();
		_exit(0);
	}
	test_ready();
	test_waitsig();
	char got[20000];
	ssize_t n = 0;
	while (n < (ssize_t)sizeof got) {
		ssize_t r = read(p[0], got + n, sizeof got - n);
		if (r <= 0) fail("read %zd", r);
		n += r;
	}
	if (memcmp(got, buf, sizeof buf)) fail("pipe data differs");
	char t[8];
	if (read(q[0], t, 8) != 4 || memcmp(t, "tail", 4)) fail("q data");
	if (!(fcntl(q[0], F_GETFL) & O_NONBLOCK)) fail("O_NONBLOCK lost");
	if (read(q[0], t, 8) != -1 || errno != EAGAIN) fail("q not empty/nonblocking");
	/* the pipe still connects to the writer end */
	if (write(p[1], "x", 1) != 1 || read(p[0], t, 1) != 1 || t[0] != 'x') fail("pipe broken");
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	pass();
}
