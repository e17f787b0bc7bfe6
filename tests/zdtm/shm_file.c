/* MAP_SHARED mappings of files: a regular file keeps writing through to the
 * file (and the file to the mapping) after restore; files deleted while mapped
 * come back with their contents, one inode for the fd and the mappings, still
 * shared with a child; a private mapping of a deleted file keeps its own page. */
#include "zdtmlib.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define SZ (4 * 4096)

static void *map(int fd, int flags)
{
	void *m = mmap(NULL, SZ, PROT_READ | PROT_WRITE, flags, fd, 0);
	if (m == MAP_FAILED)
		fail("mmap");
	return m;
}

static int make(const char *path, char fill)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || ftruncate(fd, SZ) < 0)
		fail("create %s", path);
	char page[4096];
	memset(page, fill, sizeof(page));
	for (int i = 0; i < SZ / 4096; i++)
		if (pwrite(fd, page, sizeof(page), i * 4096) != sizeof(page))
			fail("fill %s", path);
	return fd;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	/* reg: a regular file, mapped shared; the fd closed */
	int fd = make("shm_file.reg", 'r');
	char *reg = map(fd, MAP_SHARED);
	close(fd);
	reg[10] = 'R';
	/* del: deleted while mapped shared, fd kept */
	int del_fd = make("shm_file.del", 'd');
	char *del = map(del_fd, MAP_SHARED);
	unlink("shm_file.del");
	del[20] = 'D';
	/* gone: deleted while mapped shared, no fd left */
	fd = make("shm_file.gone", 'g');
	char *gone = map(fd, MAP_SHARED);
	close(fd);
	unlink("shm_file.gone");
	/* priv: deleted, mapped private with one copied page */
	fd = make("shm_file.priv", 'p');
	char *priv = map(fd, MAP_PRIVATE);
	close(fd);
	unlink("shm_file.priv");
	priv[4096] = 'P';

	int p2c[2], c2p[2];
	if (pipe(p2c) || pipe(c2p))
		fail("pipe");
	pid_t kid = fork();
	if (kid == 0) {
		char x;
		while (read(p2c[0], &x, 1) == 1) {
			reg[1] = x;
			del[1] = x;
			gone[1] = x;
			write(c2p[1], &x, 1);
		}
		_exit(0);
	}

	test_ready();
	test_waitsig();

	/* reg: the mapping and the file are still one */
	if (reg[10] != 'R' || reg[11] != 'r')
		fail("reg contents %c%c", reg[10], reg[11]);
	reg[100] = 'W';
	msync(reg, SZ, MS_SYNC);
	fd = open("shm_file.reg", O_RDWR);
	char c;
	if (fd < 0 || pread(fd, &c, 1, 100) != 1 || c != 'W')
		fail("a write through the mapping did not reach the file (%c)", c);
	if (pwrite(fd, "F", 1, 200) != 1 || reg[200] != 'F')
		fail("a write to the file is not seen in the mapping");
	close(fd);
	/* del */
	struct stat st;
	if (fstat(del_fd, &st) < 0 || st.st_nlink != 0 || st.st_size != SZ)
		fail("del: nlink %ld size %ld", (long)st.st_nlink, (long)st.st_size);
	if (del[20] != 'D' || del[21] != 'd')
		fail("del contents");
	del[300] = 'M';
	if (pread(del_fd, &c, 1, 300) != 1 || c != 'M')
		fail("del's mapping and fd are not one file any more");
	char p[128];
	snprintf(p, sizeof(p), "/proc/self/map_files/%lx-%lx", (unsigned long)del, (unsigned long)del + SZ);
	struct stat mst;
	if (stat(p, &mst) < 0 || mst.st_ino != st.st_ino)
		fail("del mapping inode %lu, fd inode %lu", (unsigned long)mst.st_ino, (unsigned long)st.st_ino);
	/* gone */
	if (gone[0] != 'g' || gone[SZ - 1] != 'g')
		fail("gone contents");
	/* priv */
	if (priv[4096] != 'P' || priv[4097] != 'p' || priv[0] != 'p')
		fail("priv contents");
	/* the child still shares them */
	char x = 'k', y;
	if (write(p2c[1], &x, 1) != 1 || read(c2p[0], &y, 1) != 1)
		fail("child gone");
	if (reg[1] != 'k' || del[1] != 'k' || gone[1] != 'k')
		fail("shared mappings not shared with the child: %c %c %c", reg[1], del[1], gone[1]);
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	unlink("shm_file.reg");
	pass();
}
