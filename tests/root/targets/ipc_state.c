/* IPC state for tests/root/test_container_state.py, by argv[1]:
 *   make         create SysV shm/sem/msg objects and POSIX queues, then exit
 *                (the IPC namespace keeps them with no process holding them)
 *   check        verify the contents `make` put there; prints PASS or FAIL
 *   partial_shm  hold a SysV shm attachment with a page unmapped (refused)
 *   mq_notify    hold a POSIX queue with a notification registered (refused)
 * The holding modes wait for SIGTERM and then check their state is untouched. */
#include "zdtmlib.h"
#include <mqueue.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>

#define SHM_KEY 0x51a7e001
#define SEM_KEY 0x51a7e002
#define MSG_KEY 0x51a7e003

union semun {
	int val;
	struct semid_ds *buf;
	unsigned short *array;
};

struct msg {
	long mtype;
	char text[64];
};

static void make(void)
{
	int shm = shmget(SHM_KEY, 5 * 4096 + 1, IPC_CREAT | IPC_EXCL | 0604);
	if (shm < 0)
		fail("shmget");
	char *p = shmat(shm, NULL, 0);
	if (p == (void *)-1)
		fail("shmat");
	for (int i = 0; i < 5 * 4096 + 1; i++)
		p[i] = (char)(i % 251);
	shmdt(p);
	int sem = semget(SEM_KEY, 4, IPC_CREAT | IPC_EXCL | 0660);
	unsigned short vals[4] = {4, 3, 2, 1};
	union semun arg = {.array = vals};
	if (sem < 0 || semctl(sem, 0, SETALL, arg) < 0)
		fail("sem");
	int msq = msgget(MSG_KEY, IPC_CREAT | IPC_EXCL | 0640);
	struct msg m;
	for (int i = 0; i < 5; i++) {
		m.mtype = 10 + i;
		int n = snprintf(m.text, sizeof(m.text), "state %d", i);
		if (msq < 0 || msgsnd(msq, &m, n, 0) < 0)
			fail("msg");
	}
	struct mq_attr a = {.mq_maxmsg = 5, .mq_msgsize = 100};
	mqd_t q = mq_open("/state-q", O_CREAT | O_EXCL | O_WRONLY, 0644, &a);
	if (q < 0 || mq_send(q, "first", 5, 1) < 0 || mq_send(q, "second", 6, 9) < 0)
		fail("mq");
	mq_close(q);
	printf("MADE\n");
}

static void check(void)
{
	int shm = shmget(SHM_KEY, 0, 0);
	char *p = shm < 0 ? (void *)-1 : shmat(shm, NULL, SHM_RDONLY);
	if (p == (void *)-1)
		fail("shm gone");
	for (int i = 0; i < 5 * 4096 + 1; i++)
		if (p[i] != (char)(i % 251))
			fail("shm byte %d", i);
	int sem = semget(SEM_KEY, 0, 0);
	for (int i = 0; i < 4; i++)
		if (semctl(sem, i, GETVAL) != 4 - i)
			fail("sem %d is %d", i, semctl(sem, i, GETVAL));
	int msq = msgget(MSG_KEY, 0);
	struct msg m;
	for (int i = 0; i < 5; i++) {
		char want[32];
		int n = snprintf(want, sizeof(want), "state %d", i);
		if (msgrcv(msq, &m, sizeof(m.text), 0, IPC_NOWAIT) != n || m.mtype != 10 + i || memcmp(m.text, want, n))
			fail("message %d", i);
	}
	mqd_t q = mq_open("/state-q", O_RDONLY | O_NONBLOCK);
	char buf[100];
	unsigned prio;
	if (q < 0 || mq_receive(q, buf, sizeof(buf), &prio) != 6 || prio != 9 ||
	    mq_receive(q, buf, sizeof(buf), &prio) != 5 || prio != 1)
		fail("mq");
	pass();
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	if (!strcmp(mode, "make")) {
		make();
		return 0;
	}
	if (!strcmp(mode, "check")) {
		check();
		return 0;
	}
	test_init(argc, argv);
	if (!strcmp(mode, "partial_shm")) {
		int shm = shmget(IPC_PRIVATE, 3 * 4096, IPC_CREAT | 0600);
		char *p = shmat(shm, NULL, 0);
		if (p == (void *)-1)
			fail("shmat");
		p[0] = 'x';
		if (munmap(p + 4096, 4096) < 0)
			fail("munmap");
		test_ready();
		test_waitsig();
		if (p[0] != 'x')
			fail("segment changed");
		shmctl(shm, IPC_RMID, NULL);
		pass();
	} else if (!strcmp(mode, "mq_notify")) {
		struct mq_attr a = {.mq_maxmsg = 4, .mq_msgsize = 16};
		mqd_t q = mq_open("/notified", O_CREAT | O_RDWR | O_NONBLOCK, 0600, &a);
		if (q < 0 || mq_send(q, "kept", 4, 3) < 0)
			fail("mq");
		struct sigevent ev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR1};
		if (mq_notify(q, &ev) < 0)
			fail("mq_notify");
		test_ready();
		test_waitsig();
		char buf[16];
		unsigned prio;
		if (mq_receive(q, buf, sizeof(buf), &prio) != 4 || prio != 3 || memcmp(buf, "kept", 4))
			fail("the queue lost its message");
		struct sigevent again = {.sigev_notify = SIGEV_NONE};
		if (mq_notify(q, &again) == 0 || errno != EBUSY)
			fail("the registration is gone (errno %d)", errno);
		mq_unlink("/notified");
		pass();
	}
	fail("unknown mode %s", mode);
}
