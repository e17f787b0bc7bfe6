/* pids, parents, process groups, sessions; a zombie stays waitable with its status. */
#include "zdtmlib.h"
#include <sys/wait.h>

int main(int argc, char **argv)
{
	test_init(argc, argv);
	setsid();
	pid_t me = getpid();
	pid_t a = fork();
	if (a == 0) {
		setpgid(0, 0);
		pid_t g = fork();
		if (g == 0) { pause(); _exit(0); }
		pause();
		_exit(0);
	}
	pid_t z = fork();
	if (z == 0) _exit(42);
	setpgid(a, a); /* both sides, or it races with the child's own call */
	pid_t b = fork();
	if (b == 0) { pause(); _exit(0); }
	setpgid(b, a);
	usleep(100000); /* z is a zombie now */
	char ppath[64];
	snprintf(ppath, sizeof ppath, "/proc/%d/stat", z);
	test_ready();
	test_waitsig();
	if (getpid() != me) fail("pid changed");
	if (getsid(0) != me) fail("sid %d", getsid(0));
	if (getpgid(a) != a) fail("pgid of a %d", getpgid(a));
	if (getpgid(b) != a) fail("pgid of b %d", getpgid(b));
	if (getsid(a) != me || getsid(b) != me) fail("child sessions");
	int st;
	if (waitpid(z, &st, WNOHANG) != z) fail("zombie not waitable");
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 42) fail("zombie status %x", st);
	kill(a, SIGKILL);
	kill(b, SIGKILL);
	waitpid(a, NULL, 0);
	waitpid(b, NULL, 0);
	pass();
}
