/* SysV semaphores: ids, keys, modes, owners and every semaphore's value; semop
 * works after restore, including a wake-up between two processes. */
#include "zdtmlib.h"
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/wait.h>

#define KEY 0x5e5e0001
#define N 7

union semun {
	int val;
	struct semid_ds *buf;
	unsigned short *array;
};

int main(int argc, char **argv)
{
	test_init(argc, argv);
	int s1 = semget(KEY, N, IPC_CREAT | IPC_EXCL | 0640);
	int s2 = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600);
	int gap = semget(IPC_PRIVATE, 2, IPC_CREAT | 0600);
	int s3 = semget(IPC_PRIVATE, 3, IPC_CREAT | 0666);
	if (s1 < 0 || s2 < 0 || gap < 0 || s3 < 0)
		fail("semget");
	/* a hole in the ids: s3 keeps its id although a lower one is free */
	if (semctl(gap, 0, IPC_RMID) < 0)
		fail("rmid gap");
	unsigned short vals[N] = {0, 1, 2, 300, 32767, 5, 6};
	union semun arg = {.array = vals};
	if (semctl(s1, 0, SETALL, arg) < 0)
		fail("SETALL");
	struct semid_ds ds;
	arg.buf = &ds;
	if (semctl(s3, 0, IPC_STAT, arg) < 0)
		fail("IPC_STAT");
	ds.sem_perm.uid = 99;
	ds.sem_perm.gid = 98;
	ds.sem_perm.mode = 0660;
	if (semctl(s3, 0, IPC_SET, arg) < 0)
		fail("IPC_SET");
	struct sembuf up = {0, 2, 0};
	if (semop(s3, &up, 1) < 0)
		fail("semop s3");

	/* The child waits on s2 (value 0) and tells us through a pipe when it got it. */
	int c2p[2];
	if (pipe(c2p))
		fail("pipe");
	pid_t kid = fork();
	if (kid == 0) {
		struct sembuf down = {0, -1, 0};
		while (semop(s2, &down, 1) < 0)
			if (errno != EINTR)
				_exit(1);
		write(c2p[1], "k", 1);
		pause();
		_exit(0);
	}

	test_ready();
	test_waitsig();

	if (semget(KEY, 0, 0) != s1)
		fail("key maps to %d, not %d", semget(KEY, 0, 0), s1);
	unsigned short got[N];
	arg.array = got;
	if (semctl(s1, 0, GETALL, arg) < 0)
		fail("GETALL");
	for (int i = 0; i < N; i++)
		if (got[i] != vals[i])
			fail("semaphore %d is %d, not %d", i, got[i], vals[i]);
	arg.buf = &ds;
	if (semctl(s1, 0, IPC_STAT, arg) < 0 || ds.sem_nsems != N || (ds.sem_perm.mode & 0777) != 0640)
		fail("s1: nsems %lu mode %o", ds.sem_nsems, ds.sem_perm.mode);
	if (semctl(s3, 0, IPC_STAT, arg) < 0 || ds.sem_perm.uid != 99 || ds.sem_perm.gid != 98 ||
	    (ds.sem_perm.mode & 0777) != 0660 || ds.sem_nsems != 3)
		fail("s3: uid %d gid %d mode %o", ds.sem_perm.uid, ds.sem_perm.gid, ds.sem_perm.mode);
	if (semctl(s3, 0, GETVAL) != 2 || semctl(s3, 1, GETVAL) != 0)
		fail("s3 values %d %d", semctl(s3, 0, GETVAL), semctl(s3, 1, GETVAL));
	if (semctl(gap, 0, GETVAL) >= 0 || errno != EINVAL)
		fail("the removed set %d exists again", gap);
	/* semop still works: take s1[3] down by 300 and s1[4] by 1 without blocking */
	struct sembuf ops[2] = {{3, -300, IPC_NOWAIT}, {4, -1, IPC_NOWAIT}};
	if (semop(s1, ops, 2) < 0)
		fail("semop after restore");
	if (semctl(s1, 3, GETVAL) != 0 || semctl(s1, 4, GETVAL) != 32766)
		fail("semop result %d %d", semctl(s1, 3, GETVAL), semctl(s1, 4, GETVAL));
	/* the blocked child wakes up when we post s2 */
	struct sembuf post = {0, 1, 0};
	if (semop(s2, &post, 1) < 0)
		fail("post s2");
	char k;
	if (read(c2p[0], &k, 1) != 1 || k != 'k')
		fail("child did not get the semaphore");
	if (semctl(s2, 0, GETVAL) != 0)
		fail("s2 is %d after the child took it", semctl(s2, 0, GETVAL));
	kill(kid, SIGKILL);
	waitpid(kid, NULL, 0);
	semctl(s1, 0, IPC_RMID);
	semctl(s2, 0, IPC_RMID);
	semctl(s3, 0, IPC_RMID);
	pass();
}
