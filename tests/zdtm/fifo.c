/* A FIFO in the container's file system with data in it stays that FIFO: a writer
 * that opens it by path after restore reaches the restored reader. */
#include "zdtmlib.h"
#include <sys/wait.h>

int main(int argc, char **argv)
{
	test_init(argc, argv);
	unlink("fifo.node");
	if (mkfifo("fifo.node", 0600)) fail("mkfifo");
	int r = open("fifo.node", O_RDONLY | O_NONBLOCK);
	int w = open("fifo.node", O_WRONLY);
	if (r < 0 || w < 0) fail("open fifo");
	if (write(w, "before", 6) != 6) fail("write");
	test_ready();
	test_waitsig();
	char buf[32] = {0};
	if (read(r, buf, sizeof buf) != 6 || memcmp(buf, "before", 6)) fail("data in fifo '%s'", buf);
	int w2 = open("fifo.node", O_WRONLY | O_NONBLOCK);
	if (w2 < 0) fail("reopen by path");
	if (write(w2, "after", 5) != 5) fail("write by path");
	memset(buf, 0, sizeof buf);
	if (read(r, buf, sizeof buf) != 5 || memcmp(buf, "after", 5)) fail("not the same fifo '%s'", buf);
	/* default dispositions stay default after restore (the restorer is a
	 * Python process with its own handlers; none may leak into the task) */
	struct sigaction sa;
	sigaction(SIGUSR2, NULL, &sa);
	if (sa.sa_handler != SIG_DFL) fail("SIGUSR2 not default");
	sigaction(SIGXFSZ, NULL, &sa);
	if (sa.sa_handler != SIG_DFL) fail("SIGXFSZ not default");
	sigaction(SIGPIPE, NULL, &sa);
	if (sa.sa_handler != SIG_DFL) fail("SIGPIPE not default");
	pass();
}
