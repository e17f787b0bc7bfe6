/* MAP_SHARED anonymous memory stays shared between parent and child, contents kept. */
#include "zdtmlib.h"
#include <sys/mman.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	test_init(argc, argv);
	size_t sz = 4 << 20;
	volatile unsigned char *m = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	for (size_t i = 0; i < sz; i += 4096) m[i] = (unsigned char)(i >> 12);
	int p[2], q[2];
	pipe(p);
	pipe(q);
	pid_t c = fork();
	if (c == 0) {
		char x;
		read(p[0], &x, 1);
		m[100] = 0xAB;
		write(q[1], "y", 1);
		pause();
		_exit(0);
	}
	test_ready();
	test_waitsig();
	for (size_t i = 0; i < sz; i += 4096) if (m[i] != (unsigned char)(i >> 12)) fail("content at %zu", i);
	write(p[1], "x", 1);
	char y;
	read(q[0], &y, 1);
	if (m[100] != 0xAB) fail("not shared after restore");
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	pass();
}
