/* SysV message queues: ids, keys, modes, owners, capacity and every queued
 * message in order with its type; msgsnd/msgrcv work after restore. */
#include "zdtmlib.h"
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/wait.h>

#define KEY 0x3e3e0001

struct msg {
	long mtype;
	char text[8192];
};

static struct msg m;

static void send(int q, long type, const char *fmt, int i)
{
	m.mtype = type;
	int n = snprintf(m.text, sizeof(m.text), fmt, i);
	if (msgsnd(q, &m, n, IPC_NOWAIT) < 0)
		fail("msgsnd %d", i);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	int q1 = msgget(KEY, IPC_CREAT | IPC_EXCL | 0620);
	int q2 = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
	int q3 = msgget(IPC_PRIVATE, IPC_CREAT | 0600); /* empty */
	if (q1 < 0 || q2 < 0 || q3 < 0)
		fail("msgget");
	for (int i = 0; i < 40; i++)
		send(q1, 1 + i % 3, "message %d", i);
	/* an empty message and a binary one */
	m.mtype = 9;
	if (msgsnd(q1, &m, 0, 0) < 0)
		fail("empty msgsnd");
	m.mtype = 10;
	for (int i = 0; i < 300; i++)
		m.text[i] = (char)i;
	if (msgsnd(q1, &m, 300, 0) < 0)
		fail("binary msgsnd");
	struct msqid_ds ds;
	if (msgctl(q2, IPC_STAT, &ds) < 0)
		fail("IPC_STAT");
	ds.msg_qbytes = 4000; /* lower than the default: allowed without privilege */
	ds.msg_perm.uid = 77;
	ds.msg_perm.mode = 0640;
	if (msgctl(q2, IPC_SET, &ds) < 0)
		fail("IPC_SET");
	send(q2, 5, "only %d", 1);
	/* q4: created by another user: its creator ids (cuid/cgid) are not settable */
	int p[2], q4 = -1;
	if (pipe(p))
		fail("pipe");
	pid_t kid = fork();
	if (kid == 0) {
		if (setgid(200) || setuid(100))
			_exit(1);
		int q = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
		write(p[1], &q, sizeof(q));
		_exit(0);
	}
	if (read(p[0], &q4, sizeof(q4)) != sizeof(q4) || q4 < 0)
		fail("msgget as uid 100");
	waitpid(kid, NULL, 0);

	test_ready();
	test_waitsig();

	if (msgget(KEY, 0) != q1)
		fail("key maps to %d, not %d", msgget(KEY, 0), q1);
	if (msgctl(q1, IPC_STAT, &ds) < 0 || ds.msg_qnum != 42 || (ds.msg_perm.mode & 0777) != 0620)
		fail("q1: qnum %lu mode %o", ds.msg_qnum, ds.msg_perm.mode);
	if (msgctl(q2, IPC_STAT, &ds) < 0 || ds.msg_qnum != 1 || ds.msg_qbytes != 4000 ||
	    ds.msg_perm.uid != 77 || (ds.msg_perm.mode & 0777) != 0640)
		fail("q2: qnum %lu qbytes %lu uid %d mode %o", ds.msg_qnum, ds.msg_qbytes, ds.msg_perm.uid,
		     ds.msg_perm.mode);
	if (msgctl(q3, IPC_STAT, &ds) < 0 || ds.msg_qnum != 0)
		fail("q3 lost");
	if (msgctl(q4, IPC_STAT, &ds) < 0 || ds.msg_perm.cuid != 100 || ds.msg_perm.cgid != 200 ||
	    ds.msg_perm.uid != 100 || ds.msg_perm.gid != 200)
		fail("q4: cuid %d cgid %d uid %d gid %d", ds.msg_perm.cuid, ds.msg_perm.cgid, ds.msg_perm.uid,
		     ds.msg_perm.gid);
	/* type 2 first: receive by type keeps the order within the type */
	char want[64];
	for (int i = 1; i < 40; i += 3) {
		ssize_t n = msgrcv(q1, &m, sizeof(m.text), 2, IPC_NOWAIT);
		snprintf(want, sizeof(want), "message %d", i);
		if (n != (ssize_t)strlen(want) || memcmp(m.text, want, n) || m.mtype != 2)
			fail("type 2 message %d: got %.*s type %ld", i, (int)n, m.text, m.mtype);
	}
	/* then everything else in queue order */
	for (int i = 0; i < 40; i++) {
		if (i % 3 == 1)
			continue;
		ssize_t n = msgrcv(q1, &m, sizeof(m.text), 0, IPC_NOWAIT);
		snprintf(want, sizeof(want), "message %d", i);
		if (n != (ssize_t)strlen(want) || memcmp(m.text, want, n) || m.mtype != 1 + i % 3)
			fail("message %d: got %.*s type %ld", i, (int)n, m.text, m.mtype);
	}
	if (msgrcv(q1, &m, sizeof(m.text), 0, IPC_NOWAIT) != 0 || m.mtype != 9)
		fail("empty message");
	if (msgrcv(q1, &m, sizeof(m.text), 0, IPC_NOWAIT) != 300 || m.mtype != 10)
		fail("binary message");
	for (int i = 0; i < 300; i++)
		if (m.text[i] != (char)i)
			fail("binary byte %d", i);
	if (msgrcv(q1, &m, sizeof(m.text), 0, IPC_NOWAIT) >= 0 || errno != ENOMSG)
		fail("q1 not empty");
	if (msgrcv(q2, &m, sizeof(m.text), 0, IPC_NOWAIT) != 6 || memcmp(m.text, "only 1", 6))
		fail("q2 message");
	send(q3, 1, "new %d", 3);
	if (msgrcv(q3, &m, sizeof(m.text), 1, IPC_NOWAIT) != 5)
		fail("q3 after restore");
	msgctl(q1, IPC_RMID, NULL);
	msgctl(q2, IPC_RMID, NULL);
	msgctl(q3, IPC_RMID, NULL);
	msgctl(q4, IPC_RMID, NULL);
	pass();
}
