/* Regular files: offsets, flags, an fd shared by fork (same offset), a deleted file. */
#include "zdtmlib.h"
#include <sys/wait.h>

int main(int argc, char **argv)
{
	test_init(argc, argv);
	int fd = open("file_offset.data", O_RDWR | O_CREAT | O_TRUNC, 0600);
	char buf[8192];
	memset(buf, 'a', sizeof buf);
	write(fd, buf, sizeof buf);
	lseek(fd, 1234, SEEK_SET);
	int afd = open("file_offset.log", O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0600);
	write(afd, "abc", 3);
	int del = open("file_offset.ghost", O_RDWR | O_CREAT | O_TRUNC, 0600);
	write(del, "ghost contents", 14);
	lseek(del, 6, SEEK_SET);
	unlink("file_offset.ghost");
	int hi = dup2(fd, 100);
	fcntl(hi, F_SETFD, FD_CLOEXEC);
	int dfd = open(".", O_RDONLY | O_DIRECTORY);
	int ppipe[2], cpipe[2];
	pipe(ppipe);
	pipe(cpipe);
	pid_t c = fork();
	if (c == 0) {
		/* shared description: move the offset, parent must see it */
		char x;
		read(ppipe[0], &x, 1);
		lseek(fd, 4321, SEEK_SET);
		write(cpipe[1], "y", 1);
		pause();
		_exit(0);
	}
	test_ready();
	test_waitsig();
	if (lseek(fd, 0, SEEK_CUR) != 1234) fail("offset %ld", (long)lseek(fd, 0, SEEK_CUR));
	if (!(fcntl(afd, F_GETFL) & O_APPEND)) fail("O_APPEND lost");
	if ((fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDWR) fail("access mode");
	if (!(fcntl(hi, F_GETFD) & FD_CLOEXEC)) fail("cloexec lost");
	if (fcntl(fd, F_GETFD) & FD_CLOEXEC) fail("cloexec set");
	char g[32] = {0};
	if (read(del, g, 31) != 8 || strcmp(g, "contents")) fail("ghost read '%s'", g);
	struct stat st;
	if (fstat(del, &st) || st.st_nlink != 0) fail("ghost is linked");
	if (fstat(dfd, &st) || !S_ISDIR(st.st_mode)) fail("dir fd");
	write(ppipe[1], "x", 1);
	char y;
	read(cpipe[0], &y, 1);
	/* child moved the shared offset; a pipe message could race, so re-read */
	if (lseek(fd, 0, SEEK_CUR) != 4321) fail("shared offset not shared: %ld", (long)lseek(fd, 0, SEEK_CUR));
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	pass();
}
