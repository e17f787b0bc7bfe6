/* `mount --make-rshared /` as systemd does at boot: every mount (the root too)
 * shared, each in its own peer group, mounts with submounts among them; after
 * restore the same, and propagation between a shared tmpfs and its bind works. */
#define _GNU_SOURCE
#include "zdtmlib.h"
#include <sys/mount.h>
#include <sys/statvfs.h>

/* The peer group of mount point `mp` (last line for it), 0 if not shared. */
static int group(const char *mp)
{
	char line[1024];
	int g = -1;
	FILE *f = fopen("/proc/self/mountinfo", "r");
	while (f && fgets(line, sizeof(line), f)) {
		char point[256];
		if (sscanf(line, "%*d %*d %*s %*s %255s", point) != 1 || strcmp(point, mp))
			continue;
		char *s = strstr(line, " shared:");
		char *dash = strstr(line, " - ");
		g = (s && s < dash) ? atoi(s + 8) : 0;
	}
	if (f)
		fclose(f);
	return g;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	mkdir("/mnt/rs", 0755);
	mkdir("/mnt/rs2", 0755);
	if (mount(NULL, "/", NULL, MS_REC | MS_SHARED, NULL) < 0)
		fail("make-rshared /");
	if (mount("rs", "/mnt/rs", "tmpfs", 0, "size=1m") < 0)
		fail("tmpfs");
	mkdir("/mnt/rs/c", 0755);
	mkdir("/mnt/rs/x", 0755);
	if (mount("rsc", "/mnt/rs/c", "tmpfs", 0, "size=64k") < 0)
		fail("submount");
	int g_root = group("/"), g_dev = group("/dev"), g_rs = group("/mnt/rs"), g_c = group("/mnt/rs/c");
	if (g_root <= 0 || g_dev <= 0 || g_rs <= 0 || g_c <= 0)
		fail("not all shared: %d %d %d %d", g_root, g_dev, g_rs, g_c);

	test_ready();
	test_waitsig();

	int r_root = group("/"), r_dev = group("/dev"), r_pts = group("/dev/pts"), r_rs = group("/mnt/rs"),
	    r_c = group("/mnt/rs/c");
	if (r_root <= 0 || r_dev <= 0 || r_pts <= 0 || r_rs <= 0 || r_c <= 0)
		fail("not all shared after restore: / %d /dev %d /dev/pts %d /mnt/rs %d /mnt/rs/c %d", r_root, r_dev,
		     r_pts, r_rs, r_c);
	if (r_root == r_dev || r_dev == r_pts || r_rs == r_c || r_root == r_rs)
		fail("peer groups merged: %d %d %d %d %d", r_root, r_dev, r_pts, r_rs, r_c);
	/* a bind of a shared mount is its peer; a mount under one shows under the other */
	if (mount("/mnt/rs", "/mnt/rs2", NULL, MS_BIND, NULL) < 0)
		fail("bind");
	if (group("/mnt/rs2") != r_rs)
		fail("the bind is not a peer");
	if (mount("rsx", "/mnt/rs/x", "tmpfs", 0, "size=64k") < 0)
		fail("mount under the shared tmpfs");
	struct statvfs a, b;
	if (statvfs("/mnt/rs/x", &a) || statvfs("/mnt/rs2/x", &b) || a.f_fsid != b.f_fsid)
		fail("no propagation between peers");
	/* the root is shared too: a new mount under it is shared at once */
	mkdir("/mnt/new", 0755);
	if (mount("new", "/mnt/new", "tmpfs", 0, "size=64k") < 0 || group("/mnt/new") <= 0)
		fail("a mount under the shared root is not shared");
	pass();
}
