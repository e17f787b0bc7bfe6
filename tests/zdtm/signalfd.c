/* signalfd: masks and flags; a signal pending since before the dump and signals sent
 * after restore are read through the right signalfd with their siginfo. */
#include "zdtmlib.h"
#include <poll.h>
#include <sys/signalfd.h>

static int fdinfo_mask(int fd, unsigned long long *mask)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	FILE *f = fopen(path, "r");
	if (!f) return -1;
	int found = -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "sigmask: %llx", mask) == 1) found = 0;
	fclose(f);
	return found;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	sigset_t block, m1, m2;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	sigaddset(&block, SIGRTMIN + 1);
	sigprocmask(SIG_BLOCK, &block, NULL);
	sigemptyset(&m1);
	sigaddset(&m1, SIGUSR1);
	sigemptyset(&m2);
	sigaddset(&m2, SIGUSR2);
	sigaddset(&m2, SIGRTMIN + 1);
	int s1 = signalfd(-1, &m1, SFD_NONBLOCK | SFD_CLOEXEC);
	int s2 = signalfd(-1, &m2, 0);
	if (s1 < 0 || s2 < 0) fail("signalfd");
	unsigned long long before1, before2;
	if (fdinfo_mask(s1, &before1) || fdinfo_mask(s2, &before2)) fail("fdinfo before");
	kill(getpid(), SIGUSR2); /* pending across the dump */
	test_ready();
	test_waitsig();

	unsigned long long after1, after2;
	if (fdinfo_mask(s1, &after1) || fdinfo_mask(s2, &after2)) fail("fdinfo after");
	if (after1 != before1 || after2 != before2)
		fail("masks %llx %llx, were %llx %llx", after1, after2, before1, before2);
	if (!(fcntl(s1, F_GETFL) & O_NONBLOCK)) fail("s1: O_NONBLOCK lost");
	if (fcntl(s2, F_GETFL) & O_NONBLOCK) fail("s2: O_NONBLOCK appeared");
	if (!(fcntl(s1, F_GETFD) & FD_CLOEXEC)) fail("s1: FD_CLOEXEC lost");

	struct signalfd_siginfo si;
	if (read(s1, &si, sizeof si) != -1 || errno != EAGAIN) fail("s1 readable with nothing pending");
	struct pollfd pf = {.fd = s2, .events = POLLIN};
	if (poll(&pf, 1, 0) != 1) fail("s2 does not see the pending SIGUSR2");
	if (read(s2, &si, sizeof si) != sizeof si) fail("read s2");
	if (si.ssi_signo != SIGUSR2 || si.ssi_pid != (uint32_t)getpid())
		fail("s2 read signal %u from %u", si.ssi_signo, si.ssi_pid);

	kill(getpid(), SIGUSR1);
	if (read(s1, &si, sizeof si) != sizeof si) fail("read s1");
	if (si.ssi_signo != SIGUSR1 || si.ssi_code != SI_USER) fail("s1 read signal %u code %d", si.ssi_signo, si.ssi_code);

	union sigval val = {.sival_int = 77};
	sigqueue(getpid(), SIGRTMIN + 1, val);
	if (read(s2, &si, sizeof si) != sizeof si) fail("read s2 rt");
	if ((int)si.ssi_signo != SIGRTMIN + 1 || si.ssi_int != 77) fail("s2 rt %u value %d", si.ssi_signo, si.ssi_int);

	/* SIGUSR1 is not in s2's mask */
	kill(getpid(), SIGUSR1);
	if (poll(&pf, 1, 0) != 0) fail("s2 sees SIGUSR1");
	if (read(s1, &si, sizeof si) != sizeof si || si.ssi_signo != SIGUSR1) fail("second SIGUSR1");
	pass();
}
