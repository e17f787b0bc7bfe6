/* SysV shared memory: ids, keys, modes, owners, sizes and contents of segments
 * (attached, unattached, removed-while-attached, read-only), and a segment
 * still shared between parent and child after restore. */
#include "zdtmlib.h"
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/wait.h>

#define KEY_A 0x7a7a0001
#define KEY_B 0x7a7a0002
#define SZ_A (3 * 4096 + 100) /* not a page multiple */
#define SZ_B (1 << 20)

static void fill(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(i * 7 + seed);
}

static int check(const unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (unsigned char)(i * 7 + seed))
			return 0;
	return 1;
}

static void stat_of(int id, struct shmid_ds *ds)
{
	if (shmctl(id, IPC_STAT, ds) < 0)
		fail("IPC_STAT of %d", id);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	/* A: keyed, attached by parent and child, written by both */
	int a = shmget(KEY_A, SZ_A, IPC_CREAT | IPC_EXCL | 0640);
	/* B: keyed, never attached after it was filled (contents only in the segment) */
	int b = shmget(KEY_B, SZ_B, IPC_CREAT | IPC_EXCL | 0600);
	/* C: private, attached, then IPC_RMID (lives while attached) */
	int c = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0666);
	/* D: private, attached read-only, owner changed */
	int d = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0644);
	if (a < 0 || b < 0 || c < 0 || d < 0)
		fail("shmget");
	unsigned char *pa = shmat(a, NULL, 0);
	unsigned char *pb = shmat(b, NULL, 0);
	unsigned char *pc = shmat(c, NULL, 0);
	unsigned char *pd_rw = shmat(d, NULL, 0);
	if (pa == (void *)-1 || pb == (void *)-1 || pc == (void *)-1 || pd_rw == (void *)-1)
		fail("shmat");
	fill(pa, SZ_A, 1);
	/* B: sparse: only a few pages written, the rest must read as zero */
	pb[0] = 0x11;
	pb[SZ_B / 2] = 0x22;
	pb[SZ_B - 1] = 0x33;
	fill(pc, 8192, 3);
	fill(pd_rw, 4096, 4);
	shmdt(pb);
	shmdt(pd_rw);
	unsigned char *pd = shmat(d, NULL, SHM_RDONLY);
	if (pd == (void *)-1)
		fail("shmat ro");
	struct shmid_ds ds;
	stat_of(d, &ds);
	ds.shm_perm.uid = 1234;
	ds.shm_perm.gid = 4321;
	ds.shm_perm.mode = 0604;
	if (shmctl(d, IPC_SET, &ds) < 0)
		fail("IPC_SET");
	if (shmctl(c, IPC_RMID, NULL) < 0)
		fail("IPC_RMID");

	int p2c[2], c2p[2];
	if (pipe(p2c) || pipe(c2p))
		fail("pipe");
	pid_t kid = fork();
	if (kid == 0) {
		char x;
		for (;;) {
			if (read(p2c[0], &x, 1) != 1)
				_exit(1);
			pa[100] = (unsigned char)x; /* the parent must see it */
			pc[200] = (unsigned char)x;
			if (write(c2p[1], &x, 1) != 1)
				_exit(1);
		}
	}

	test_ready();
	test_waitsig();

	/* ids and keys */
	if (shmget(KEY_A, 0, 0) != a)
		fail("key A maps to %d, not %d", shmget(KEY_A, 0, 0), a);
	if (shmget(KEY_B, 0, 0) != b)
		fail("key B maps to %d, not %d", shmget(KEY_B, 0, 0), b);
	stat_of(a, &ds);
	if (ds.shm_segsz != SZ_A || (ds.shm_perm.mode & 0777) != 0640 || ds.shm_nattch != 2)
		fail("A: size %zu mode %o nattch %lu", ds.shm_segsz, ds.shm_perm.mode, ds.shm_nattch);
	stat_of(b, &ds);
	if (ds.shm_segsz != SZ_B || (ds.shm_perm.mode & 0777) != 0600 || ds.shm_nattch != 0)
		fail("B: size %zu mode %o nattch %lu", ds.shm_segsz, ds.shm_perm.mode, ds.shm_nattch);
	stat_of(c, &ds);
	if (!(ds.shm_perm.mode & SHM_DEST) || ds.shm_nattch != 2 || ds.shm_perm.__key != IPC_PRIVATE)
		fail("C: mode %o nattch %lu key %x", ds.shm_perm.mode, ds.shm_nattch, ds.shm_perm.__key);
	stat_of(d, &ds);
	if (ds.shm_perm.uid != 1234 || ds.shm_perm.gid != 4321 || (ds.shm_perm.mode & 0777) != 0604 ||
	    ds.shm_perm.cuid != 0 || ds.shm_nattch != 2 /* the child inherited it */)
		fail("D: uid %d gid %d mode %o cuid %d nattch %lu", ds.shm_perm.uid, ds.shm_perm.gid,
		     ds.shm_perm.mode, ds.shm_perm.cuid, ds.shm_nattch);
	/* contents */
	if (!check(pa, SZ_A, 1))
		fail("A contents");
	if (!check(pc, 8192, 3))
		fail("C contents");
	if (!check(pd, 4096, 4))
		fail("D contents");
	pb = shmat(b, NULL, SHM_RDONLY);
	if (pb == (void *)-1)
		fail("shmat B after restore");
	for (size_t i = 0; i < SZ_B; i++) {
		unsigned char want = i == 0 ? 0x11 : i == SZ_B / 2 ? 0x22 : i == SZ_B - 1 ? 0x33 : 0;
		if (pb[i] != want)
			fail("B byte %zu is %x, not %x", i, pb[i], want);
	}
	/* D stays read-only: a write must fault */
	char line[64];
	FILE *m = fopen("/proc/self/maps", "r");
	int ro = 0;
	char buf[512];
	snprintf(line, sizeof(line), "%lx-", (unsigned long)pd);
	while (m && fgets(buf, sizeof(buf), m))
		if (!strncmp(buf, line, strlen(line)) && !strncmp(strchr(buf, ' ') + 1, "r--s", 4))
			ro = 1;
	if (m)
		fclose(m);
	if (!ro)
		fail("D is not mapped r--s any more");
	/* still shared with the child */
	char x = 0x5c, y;
	if (write(p2c[1], &x, 1) != 1 || read(c2p[0], &y, 1) != 1)
		fail("child gone");
	if (pa[100] != 0x5c || pc[200] != 0x5c)
		fail("not shared with the child after restore (%x %x)", pa[100], pc[200]);
	/* removing the segments works: the kernel knows them */
	if (shmdt(pa) || shmdt(pc) || shmdt(pd) || shmdt(pb))
		fail("shmdt");
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	if (shmctl(a, IPC_RMID, NULL) || shmctl(b, IPC_RMID, NULL) || shmctl(d, IPC_RMID, NULL))
		fail("IPC_RMID at the end");
	pass();
}
