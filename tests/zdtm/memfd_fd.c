/* memfd as descriptors and mappings: names, contents (sparse), sizes, modes,
 * seals, offsets (shared by dup'd fds, separate for a reopened one), one inode
 * for an fd and a mapping of the same memfd, sharing with a child, and a
 * MAP_PRIVATE mapping keeping its own copied pages. */
#include "zdtmlib.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define SZ (1 << 20)

static unsigned long ino_of(int fd)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		fail("fstat %d", fd);
	return st.st_ino;
}

static void want_link(int fd, const char *want)
{
	char p[64], buf[256];
	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(p, buf, sizeof(buf) - 1);
	if (n < 0)
		fail("readlink %s", p);
	buf[n] = 0;
	if (strcmp(buf, want))
		fail("fd %d is %s, not %s", fd, buf, want);
}

static int map_files_fd(void *addr, size_t len)
{
	char p[128];
	snprintf(p, sizeof(p), "/proc/self/map_files/%lx-%lx", (unsigned long)addr, (unsigned long)addr + len);
	return open(p, O_RDONLY);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	/* a: sealed against any change, sparse contents */
	int a = memfd_create("zdtm-a", MFD_ALLOW_SEALING);
	if (a < 0 || ftruncate(a, SZ) < 0)
		fail("memfd a");
	if (pwrite(a, "head", 4, 0) != 4 || pwrite(a, "middle", 6, SZ / 2 + 3) != 6 || pwrite(a, "T", 1, SZ - 1) != 1)
		fail("write a");
	if (fchmod(a, 0640) < 0)
		fail("fchmod a");
	if (fcntl(a, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) < 0)
		fail("seal a");
	lseek(a, 1000, SEEK_SET);
	/* b: no sealing allowed; mapped shared, shared with the child; three fds */
	int b = memfd_create("zdtm-b", 0);
	if (b < 0 || ftruncate(b, 3 * 4096) < 0)
		fail("memfd b");
	unsigned char *mb = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
	if (mb == MAP_FAILED)
		fail("mmap b");
	memset(mb, 0x42, 3 * 4096);
	int b_dup = dup(b);
	lseek(b, 123, SEEK_SET); /* shared with b_dup */
	char p[64];
	snprintf(p, sizeof(p), "/proc/self/fd/%d", b);
	int b_own = open(p, O_RDONLY); /* a description of its own */
	lseek(b_own, 7, SEEK_SET);
	/* c: only mapped (fd closed), FUTURE_WRITE sealed after a writable mapping */
	int c = memfd_create("zdtm-c", MFD_ALLOW_SEALING);
	if (c < 0 || ftruncate(c, 4096) < 0)
		fail("memfd c");
	unsigned char *mc = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, c, 0);
	if (mc == MAP_FAILED)
		fail("mmap c");
	strcpy((char *)mc, "only mapped");
	if (fcntl(c, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) < 0)
		fail("seal c");
	close(c);
	/* d: a private mapping of a memfd with a copied page, fd kept */
	int d = memfd_create("zdtm-d", MFD_CLOEXEC);
	if (d < 0 || pwrite(d, "file data", 9, 0) != 9 || ftruncate(d, 2 * 4096) < 0)
		fail("memfd d");
	char *md = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, d, 0);
	if (md == MAP_FAILED)
		fail("mmap d");
	memcpy(md + 4096, "private", 7); /* COW page 1; page 0 stays the file's */

	int p2c[2], c2p[2];
	if (pipe(p2c) || pipe(c2p))
		fail("pipe");
	pid_t kid = fork();
	if (kid == 0) {
		char x;
		while (read(p2c[0], &x, 1) == 1) {
			mb[5] = x;
			mc[20] = x;
			write(c2p[1], &x, 1);
		}
		_exit(0);
	}

	test_ready();
	test_waitsig();

	want_link(a, "/memfd:zdtm-a (deleted)");
	want_link(b, "/memfd:zdtm-b (deleted)");
	want_link(d, "/memfd:zdtm-d (deleted)");
	struct stat st;
	if (fstat(a, &st) < 0 || st.st_size != SZ || (st.st_mode & 0777) != 0640)
		fail("a: size %ld mode %o", (long)st.st_size, st.st_mode);
	char buf[16];
	if (pread(a, buf, 4, 0) != 4 || memcmp(buf, "head", 4) || pread(a, buf, 6, SZ / 2 + 3) != 6 ||
	    memcmp(buf, "middle", 6) || pread(a, buf, 1, SZ - 1) != 1 || buf[0] != 'T')
		fail("a contents");
	if (pread(a, buf, 4, 4096) != 4 || memcmp(buf, "\0\0\0\0", 4))
		fail("a hole");
	if (fcntl(a, F_GET_SEALS) != (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE))
		fail("a seals %x", fcntl(a, F_GET_SEALS));
	if (pwrite(a, "x", 1, 0) >= 0 || errno != EPERM)
		fail("a writable despite F_SEAL_WRITE");
	if (ftruncate(a, 10) >= 0)
		fail("a shrinkable");
	if (lseek(a, 0, SEEK_CUR) != 1000)
		fail("a offset %ld", (long)lseek(a, 0, SEEK_CUR));
	/* b */
	if (fcntl(b, F_GET_SEALS) != F_SEAL_SEAL)
		fail("b seals %x", fcntl(b, F_GET_SEALS));
	if (lseek(b, 0, SEEK_CUR) != 123 || lseek(b_dup, 0, SEEK_CUR) != 123 || lseek(b_own, 0, SEEK_CUR) != 7)
		fail("b offsets %ld %ld %ld", (long)lseek(b, 0, SEEK_CUR), (long)lseek(b_dup, 0, SEEK_CUR),
		     (long)lseek(b_own, 0, SEEK_CUR));
	lseek(b, 200, SEEK_SET);
	if (lseek(b_dup, 0, SEEK_CUR) != 200 || lseek(b_own, 0, SEEK_CUR) != 7)
		fail("b offsets not shared as before");
	if ((fcntl(b_own, F_GETFL) & O_ACCMODE) != O_RDONLY || (fcntl(b, F_GETFL) & O_ACCMODE) != O_RDWR)
		fail("b access modes");
	int bm = map_files_fd(mb, 3 * 4096);
	if (bm < 0 || ino_of(bm) != ino_of(b) || ino_of(b_own) != ino_of(b))
		fail("b's mapping and fds are not one inode");
	for (int i = 0; i < 3 * 4096; i++)
		if (mb[i] != 0x42)
			fail("b contents at %d", i);
	if (pwrite(b, "W", 1, 9) != 1 || mb[9] != 'W')
		fail("a write through b's fd is not seen in its mapping");
	/* c */
	int cm = map_files_fd(mc, 4096);
	if (cm < 0)
		fail("map_files of c");
	if (strcmp((char *)mc, "only mapped"))
		fail("c contents %s", mc);
	if (fcntl(cm, F_GET_SEALS) != F_SEAL_FUTURE_WRITE)
		fail("c seals %x", fcntl(cm, F_GET_SEALS));
	mc[1] = 'N'; /* the old writable mapping still writes */
	snprintf(p, sizeof(p), "/proc/self/map_files/%lx-%lx", (unsigned long)mc, (unsigned long)mc + 4096);
	int cw = open(p, O_RDWR);
	if (cw < 0)
		fail("reopen c");
	if (mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, cw, 0) != MAP_FAILED)
		fail("c can be mapped writable despite F_SEAL_FUTURE_WRITE");
	/* d */
	if (memcmp(md, "file data", 9) || memcmp(md + 4096, "private", 7))
		fail("d mapping contents");
	if (pread(d, buf, 7, 4096) != 7 || memcmp(buf, "\0\0\0\0\0\0\0", 7))
		fail("d's private page leaked into the file");
	if (pwrite(d, "FILE", 4, 0) != 4 || memcmp(md, "FILE", 4))
		fail("d's clean private page does not follow the file");
	if (!(fcntl(d, F_GETFD) & FD_CLOEXEC))
		fail("d lost FD_CLOEXEC");
	/* sharing with the child */
	char x = 'z', y;
	if (write(p2c[1], &x, 1) != 1 || read(c2p[0], &y, 1) != 1)
		fail("child gone");
	if (mb[5] != 'z' || mc[20] != 'z')
		fail("memfd mappings not shared with the child");
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	pass();
}
