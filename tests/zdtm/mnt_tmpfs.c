/* tmpfs mounts made inside the container: options and flags, and every kind of
 * inode in them (dirs, sparse and big files, hard links, symlinks, device
 * nodes, FIFOs) with modes, owners, times and xattrs; a file hidden under a
 * submount; a tmpfs filled then remounted read-only. */
#define _GNU_SOURCE
#include "zdtmlib.h"
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#define T "/mnt/zt"
#define RO "/mnt/zt-ro"
#define BIG (300 * 1024 + 17)

static const struct timespec T1[2] = {{1000000000, 111}, {1200000000, 222}};

static void put(const char *path, const char *data, size_t n, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if (fd < 0 || write(fd, data, n) != (ssize_t)n)
		fail("write %s", path);
	fchmod(fd, mode);
	close(fd);
}

static void want_file(const char *path, const char *data, size_t n)
{
	char buf[256];
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		fail("open %s", path);
	ssize_t got = read(fd, buf, sizeof(buf));
	close(fd);
	if (got != (ssize_t)n || memcmp(buf, data, n))
		fail("%s holds %.*s", path, (int)got, buf);
}

static void want_stat(const char *path, mode_t mode, uid_t uid, gid_t gid)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		fail("lstat %s", path);
	if (st.st_mode != mode || st.st_uid != uid || st.st_gid != gid)
		fail("%s: mode %o uid %d gid %d, want %o %d %d", path, st.st_mode, st.st_uid, st.st_gid, mode,
		     uid, gid);
}

static int mountinfo_has(const char *mp, const char *needle)
{
	char line[1024];
	FILE *f = fopen("/proc/self/mountinfo", "r");
	int found = 0;
	while (f && fgets(line, sizeof(line), f)) {
		char *p = strchr(line, ' ');
		for (int i = 0; i < 3 && p; i++)
			p = strchr(p + 1, ' ');
		if (p && !strncmp(p + 1, mp, strlen(mp)) && p[1 + strlen(mp)] == ' ' && strstr(line, needle))
			found = 1;
	}
	if (f)
		fclose(f);
	return found;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	mkdir(T, 0755);
	mkdir(RO, 0755);
	if (mount("zt", T, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=4m,mode=751,uid=7,gid=8") < 0)
		fail("mount tmpfs");
	/* a file that a submount hides */
	mkdir(T "/under", 0755);
	put(T "/under/hidden", "hidden", 6, 0644);
	if (mount("up", T "/under", "tmpfs", 0, "size=64k") < 0)
		fail("mount over");
	put(T "/under/visible", "visible", 7, 0600);
	/* every kind of inode */
	if (mkdir(T "/d", 0700) < 0 || mkdir(T "/d/e", 0) < 0 || chmod(T "/d/e", 02775) < 0)
		fail("mkdir");
	put(T "/d/e/small", "small file", 10, 0640);
	put(T "/suid", "#!/bin/sh\n", 10, 04755);
	chown(T "/suid", 0, 0);
	chmod(T "/suid", 04755);
	put(T "/owned", "owned", 5, 0600);
	chown(T "/owned", 1000, 1001);
	char *big = malloc(BIG);
	for (int i = 0; i < BIG; i++)
		big[i] = (char)(i * 13 + i / 4096);
	put(T "/big", big, BIG, 0644);
	int fd = open(T "/sparse", O_RDWR | O_CREAT, 0644);
	if (fd < 0 || pwrite(fd, "A", 1, 0) != 1 || pwrite(fd, "Z", 1, (10 << 20) - 1) != 1)
		fail("sparse");
	close(fd);
	if (link(T "/d/e/small", T "/hardlink") < 0)
		fail("link");
	if (symlink("d/e/small", T "/sym") < 0 || symlink("/nowhere", T "/dangling") < 0)
		fail("symlink");
	lchown(T "/sym", 5, 6);
	if (mkfifo(T "/fifo", 0) < 0 || chmod(T "/fifo", 0620) < 0)
		fail("mkfifo");
	if (mknod(T "/null", S_IFCHR | 0666, makedev(1, 3)) < 0)
		fail("mknod");
	chmod(T "/null", 0666);
	if (setxattr(T "/owned", "user.colour", "blue", 4, 0) < 0)
		fail("setxattr user");
	if (setxattr(T "/d", "trusted.zdtm", "\0\1\2", 3, 0) < 0)
		fail("setxattr trusted");
	if (utimensat(AT_FDCWD, T "/owned", T1, 0) < 0 || utimensat(AT_FDCWD, T "/d", T1, 0) < 0 ||
	    utimensat(AT_FDCWD, T "/sym", T1, AT_SYMLINK_NOFOLLOW) < 0)
		fail("utimensat");
	/* a read-only tmpfs */
	if (mount("zro", RO, "tmpfs", 0, "size=1m") < 0)
		fail("mount ro");
	put(RO "/kept", "kept", 4, 0444);
	if (mount(NULL, RO, NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
		fail("remount ro");
	/* an open fd on the tmpfs, written after restore */
	int keep = open(T "/d/e/small", O_RDWR | O_APPEND);

	test_ready();
	test_waitsig();

	/* times first: reading a file moves its atime */
	struct stat st, st2;
	if (lstat(T "/owned", &st) < 0 || st.st_atim.tv_sec != T1[0].tv_sec || st.st_atim.tv_nsec != T1[0].tv_nsec ||
	    st.st_mtim.tv_sec != T1[1].tv_sec || st.st_mtim.tv_nsec != T1[1].tv_nsec)
		fail("times of owned: %ld %ld", st.st_atim.tv_sec, st.st_mtim.tv_sec);
	if (lstat(T "/d", &st) < 0 || st.st_mtim.tv_sec != T1[1].tv_sec)
		fail("mtime of d: %ld", st.st_mtim.tv_sec);
	if (lstat(T "/sym", &st) < 0 || st.st_mtim.tv_sec != T1[1].tv_sec)
		fail("mtime of sym: %ld", st.st_mtim.tv_sec);
	struct statvfs vfs;
	if (statvfs(T, &vfs) < 0 || vfs.f_blocks * vfs.f_frsize != 4 << 20)
		fail("size of " T " is %lu", vfs.f_blocks * vfs.f_frsize);
	if (!(vfs.f_flag & ST_NOSUID) || !(vfs.f_flag & ST_NOEXEC) || (vfs.f_flag & ST_RDONLY))
		fail(T " flags %lx", vfs.f_flag);
	if (!mountinfo_has(T, " - tmpfs zt rw,size=4096k,nr_inodes") && !mountinfo_has(T, " - tmpfs zt rw,size=4096k,mode=751,uid=7,gid=8"))
		fail(T " mount options changed");
	want_stat(T, S_IFDIR | 0751, 7, 8);
	want_file(T "/under/visible", "visible", 7);
	if (access(T "/under/hidden", F_OK) == 0)
		fail("the submount does not hide under/ any more");
	if (umount(T "/under") < 0)
		fail("umount the submount");
	want_file(T "/under/hidden", "hidden", 6);
	want_stat(T "/d", S_IFDIR | 0700, 0, 0);
	want_stat(T "/d/e", S_IFDIR | 02775, 0, 0);
	want_file(T "/d/e/small", "small file", 10);
	want_stat(T "/d/e/small", S_IFREG | 0640, 0, 0);
	want_stat(T "/suid", S_IFREG | 04755, 0, 0);
	want_stat(T "/owned", S_IFREG | 0600, 1000, 1001);
	want_file(T "/owned", "owned", 5);
	fd = open(T "/big", O_RDONLY);
	char *back = malloc(BIG + 1);
	if (fd < 0 || read(fd, back, BIG + 1) != BIG || memcmp(back, big, BIG))
		fail("big file contents");
	close(fd);
	if (stat(T "/sparse", &st) < 0 || st.st_size != 10 << 20 || st.st_blocks > 64)
		fail("sparse: size %ld blocks %ld", (long)st.st_size, (long)st.st_blocks);
	fd = open(T "/sparse", O_RDONLY);
	char c;
	if (pread(fd, &c, 1, 0) != 1 || c != 'A' || pread(fd, &c, 1, (10 << 20) - 1) != 1 || c != 'Z' ||
	    pread(fd, &c, 1, 5 << 20) != 1 || c != 0)
		fail("sparse contents");
	close(fd);
	if (stat(T "/hardlink", &st) < 0 || stat(T "/d/e/small", &st2) < 0 || st.st_ino != st2.st_ino ||
	    st.st_nlink != 2)
		fail("hard link lost: %lu %lu nlink %lu", st.st_ino, st2.st_ino, (unsigned long)st.st_nlink);
	char buf[64];
	ssize_t n = readlink(T "/sym", buf, sizeof(buf));
	if (n != 9 || memcmp(buf, "d/e/small", 9))
		fail("symlink target");
	want_stat(T "/sym", S_IFLNK | 0777, 5, 6);
	n = readlink(T "/dangling", buf, sizeof(buf));
	if (n != 8 || memcmp(buf, "/nowhere", 8))
		fail("dangling symlink");
	want_stat(T "/fifo", S_IFIFO | 0620, 0, 0);
	if (lstat(T "/null", &st) < 0 || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(1, 3))
		fail("device node");
	n = getxattr(T "/owned", "user.colour", buf, sizeof(buf));
	if (n != 4 || memcmp(buf, "blue", 4))
		fail("user xattr");
	n = getxattr(T "/d", "trusted.zdtm", buf, sizeof(buf));
	if (n != 3 || memcmp(buf, "\0\1\2", 3))
		fail("trusted xattr");
	/* the open fd writes into the restored tmpfs file */
	if (keep < 0 || write(keep, "!", 1) != 1)
		fail("write through the open fd");
	want_file(T "/hardlink", "small file!", 11);
	/* read-only */
	want_file(RO "/kept", "kept", 4);
	if (open(RO "/new", O_CREAT | O_WRONLY, 0600) >= 0 || errno != EROFS)
		fail(RO " is writable");
	if (statvfs(RO, &vfs) < 0 || !(vfs.f_flag & ST_RDONLY))
		fail(RO " flags");
	pass();
}
