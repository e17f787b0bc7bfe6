/* Bind mounts inside the container: a directory and a file of the root file
 * system, a tmpfs subdirectory (read-only bind of a writable tmpfs), a bind of
 * /proc/sys; propagation: a shared peer group, a slave of it, an unbindable
 * mount. */
#define _GNU_SOURCE
#include "zdtmlib.h"
#include <sys/mount.h>
#include <sys/statvfs.h>

struct mi {
	int found;
	char opts[256];
	char optional[256];
	char root[256];
};

/* The last mountinfo line for mount point `mp`. */
static struct mi info(const char *mp)
{
	struct mi r = {0};
	char line[1024];
	FILE *f = fopen("/proc/self/mountinfo", "r");
	while (f && fgets(line, sizeof(line), f)) {
		char root[256], point[256], opts[256];
		int n = 0;
		if (sscanf(line, "%*d %*d %*s %255s %255s %255s %n", root, point, opts, &n) < 3)
			continue;
		if (strcmp(point, mp))
			continue;
		r.found = 1;
		strcpy(r.opts, opts);
		strcpy(r.root, root);
		char *dash = strstr(line + n, "- ");
		size_t len = dash ? (size_t)(dash - (line + n)) : 0;
		memcpy(r.optional, line + n, len);
		r.optional[len] = 0;
	}
	if (f)
		fclose(f);
	return r;
}

static int tag(const char *optional, const char *name)
{
	const char *p = strstr(optional, name);
	return p ? atoi(p + strlen(name)) : 0;
}

static void bind(const char *src, const char *dst, unsigned long flags)
{
	if (mount(src, dst, NULL, MS_BIND | flags, NULL) < 0)
		fail("bind %s %s", src, dst);
}

static void same_file(const char *a, const char *b)
{
	struct stat sa, sb;
	if (stat(a, &sa) < 0 || stat(b, &sb) < 0 || sa.st_ino != sb.st_ino || sa.st_dev != sb.st_dev)
		fail("%s and %s are not the same file", a, b);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	mkdir("/zdtm/bsrc", 0755);
	mkdir("/mnt/bdir", 0755);
	int fd = open("/zdtm/bsrc/f", O_CREAT | O_WRONLY | O_TRUNC, 0644);
	close(fd);
	fd = open("/zdtm/bfile", O_CREAT | O_WRONLY | O_TRUNC, 0644);
	write(fd, "file", 4);
	close(fd);
	fd = open("/mnt/bfile", O_CREAT | O_WRONLY | O_TRUNC, 0644);
	close(fd);
	bind("/zdtm/bsrc", "/mnt/bdir", 0);
	bind("/zdtm/bfile", "/mnt/bfile", 0);
	/* a tmpfs, a subdirectory of it bound read-only elsewhere */
	mkdir("/mnt/t", 0755);
	mkdir("/mnt/tro", 0755);
	if (mount("tb", "/mnt/t", "tmpfs", 0, "size=1m") < 0)
		fail("tmpfs");
	mkdir("/mnt/t/sub", 0755);
	fd = open("/mnt/t/sub/x", O_CREAT | O_WRONLY, 0644);
	write(fd, "xx", 2);
	close(fd);
	bind("/mnt/t/sub", "/mnt/tro", 0);
	if (mount(NULL, "/mnt/tro", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOEXEC, NULL) < 0)
		fail("remount ro");
	/* /proc/sys bound read-only */
	mkdir("/mnt/psys", 0755);
	bind("/proc/sys", "/mnt/psys", 0);
	if (mount(NULL, "/mnt/psys", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0)
		fail("remount psys");
	/* propagation */
	mkdir("/mnt/sh", 0755);
	mkdir("/mnt/sh2", 0755);
	mkdir("/mnt/sl", 0755);
	mkdir("/mnt/ub", 0755);
	if (mount("tsh", "/mnt/sh", "tmpfs", 0, "size=1m") < 0)
		fail("tmpfs sh");
	mkdir("/mnt/sh/in", 0755);
	if (mount(NULL, "/mnt/sh", NULL, MS_SHARED, NULL) < 0)
		fail("make shared");
	bind("/mnt/sh", "/mnt/sh2", 0);
	bind("/mnt/sh", "/mnt/sl", 0);
	if (mount(NULL, "/mnt/sl", NULL, MS_SLAVE, NULL) < 0)
		fail("make slave");
	if (mount("tub", "/mnt/ub", "tmpfs", 0, "size=1m") < 0 || mount(NULL, "/mnt/ub", NULL, MS_UNBINDABLE, NULL) < 0)
		fail("unbindable");

	test_ready();
	test_waitsig();

	same_file("/zdtm/bsrc/f", "/mnt/bdir/f");
	fd = open("/mnt/bdir/new", O_CREAT | O_WRONLY, 0644);
	close(fd);
	if (access("/zdtm/bsrc/new", F_OK) < 0)
		fail("a file made in the bind is not in its source");
	unlink("/zdtm/bsrc/new");
	same_file("/zdtm/bfile", "/mnt/bfile");
	struct mi m = info("/mnt/bfile");
	if (!m.found || strcmp(m.root + strlen(m.root) - strlen("/zdtm/bfile"), "/zdtm/bfile"))
		fail("/mnt/bfile binds %s", m.root);
	same_file("/mnt/t/sub/x", "/mnt/tro/x");
	m = info("/mnt/tro");
	if (!m.found || strcmp(m.root, "/sub") || strncmp(m.opts, "ro,", 3) || !strstr(m.opts, "noexec"))
		fail("/mnt/tro: root %s opts %s", m.root, m.opts);
	if (open("/mnt/tro/y", O_CREAT | O_WRONLY, 0644) >= 0 || errno != EROFS)
		fail("/mnt/tro is writable");
	fd = open("/mnt/t/sub/y", O_CREAT | O_WRONLY, 0644);
	if (fd < 0)
		fail("/mnt/t is not writable");
	close(fd);
	if (access("/mnt/tro/y", F_OK) < 0)
		fail("/mnt/tro does not show /mnt/t/sub");
	m = info("/mnt/psys");
	if (!m.found || strcmp(m.root, "/sys") || strncmp(m.opts, "ro,", 3))
		fail("/mnt/psys: root %s opts %s", m.root, m.opts);
	if (access("/mnt/psys/kernel/hostname", R_OK) < 0)
		fail("/mnt/psys does not show /proc/sys");
	if (open("/mnt/psys/kernel/hostname", O_WRONLY) >= 0 || errno != EROFS)
		fail("/mnt/psys is writable");
	/* propagation flags */
	struct mi sh = info("/mnt/sh"), sh2 = info("/mnt/sh2"), sl = info("/mnt/sl"), ub = info("/mnt/ub");
	int g = tag(sh.optional, "shared:");
	if (!g || tag(sh2.optional, "shared:") != g || tag(sl.optional, "master:") != g ||
	    tag(sl.optional, "shared:"))
		fail("peer groups: sh [%s] sh2 [%s] sl [%s]", sh.optional, sh2.optional, sl.optional);
	if (!strstr(ub.optional, "unbindable"))
		fail("ub [%s]", ub.optional);
	/* and they propagate: a mount under sh shows in sh2 and sl, one under sl stays there */
	if (mount("tin", "/mnt/sh/in", "tmpfs", 0, "size=64k") < 0)
		fail("mount under sh");
	struct statvfs a, b, c;
	if (statvfs("/mnt/sh/in", &a) || statvfs("/mnt/sh2/in", &b) || statvfs("/mnt/sl/in", &c) ||
	    a.f_fsid != b.f_fsid || a.f_fsid != c.f_fsid)
		fail("a mount under a shared mount did not propagate");
	if (umount("/mnt/sl/in") < 0 || mount("tsl", "/mnt/sl/in", "tmpfs", 0, "size=64k") < 0)
		fail("mount under the slave");
	if (statvfs("/mnt/sl/in", &c) || statvfs("/mnt/sh/in", &a) || a.f_fsid == c.f_fsid)
		fail("a mount under the slave went back to its master");
	if (mount("/mnt/ub", "/mnt/bdir", NULL, MS_BIND, NULL) == 0 || errno != EINVAL)
		fail("/mnt/ub can be bound");
	pass();
}
