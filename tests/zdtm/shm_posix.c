/* POSIX shared memory (files in the container's /dev/shm tmpfs) mapped shared by
 * parent and child: contents, the file and the mapping still one, sharing kept;
 * one object shm_unlink()ed while mapped. */
#include "zdtmlib.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define SZ (64 * 4096)

int main(int argc, char **argv)
{
	test_init(argc, argv);
	int fd = shm_open("/zdtm-posix", O_CREAT | O_EXCL | O_RDWR, 0640);
	if (fd < 0 || ftruncate(fd, SZ) < 0)
		fail("shm_open");
	unsigned char *m = mmap(NULL, SZ, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		fail("mmap");
	close(fd);
	for (int i = 0; i < SZ; i += 512)
		m[i] = (unsigned char)(i / 512);
	fd = shm_open("/zdtm-gone", O_CREAT | O_EXCL | O_RDWR, 0600);
	if (fd < 0 || ftruncate(fd, 4096) < 0)
		fail("shm_open gone");
	char *g = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (g == MAP_FAILED)
		fail("mmap gone");
	close(fd);
	strcpy(g, "unlinked but mapped");
	shm_unlink("/zdtm-gone");

	int p2c[2], c2p[2];
	if (pipe(p2c) || pipe(c2p))
		fail("pipe");
	pid_t kid = fork();
	if (kid == 0) {
		char x;
		while (read(p2c[0], &x, 1) == 1) {
			m[1] = x;
			g[100] = x;
			write(c2p[1], &x, 1);
		}
		_exit(0);
	}

	test_ready();
	test_waitsig();

	for (int i = 0; i < SZ; i += 512)
		if (m[i] != (unsigned char)(i / 512))
			fail("contents at %d", i);
	if (strcmp(g, "unlinked but mapped"))
		fail("unlinked object: %s", g);
	fd = shm_open("/zdtm-posix", O_RDWR, 0);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size != SZ || (st.st_mode & 0777) != 0640)
		fail("the object: size %ld mode %o", (long)st.st_size, st.st_mode);
	m[5000] = 'M';
	char c;
	if (pread(fd, &c, 1, 5000) != 1 || c != 'M')
		fail("the mapping does not write to the object");
	if (pwrite(fd, "F", 1, 6000) != 1 || m[6000] != 'F')
		fail("the object does not show in the mapping");
	if (shm_open("/zdtm-gone", O_RDONLY, 0) >= 0)
		fail("the unlinked object is back");
	char x = 'q', y;
	if (write(p2c[1], &x, 1) != 1 || read(c2p[0], &y, 1) != 1)
		fail("child gone");
	if (m[1] != 'q' || g[100] != 'q')
		fail("not shared with the child");
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	shm_unlink("/zdtm-posix");
	pass();
}
