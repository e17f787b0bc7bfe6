/* POSIX message queues: attributes, owners, modes and queued messages with their
 * priorities (in the order mq_receive gives them); open descriptors keep their
 * flags and work after restore; a queue nobody holds open survives too. */
#include "zdtmlib.h"
#include <mqueue.h>

int main(int argc, char **argv)
{
	test_init(argc, argv);
	struct mq_attr a = {.mq_maxmsg = 10, .mq_msgsize = 256};
	mqd_t q = mq_open("/zdtm-q1", O_CREAT | O_EXCL | O_RDWR | O_NONBLOCK, 0640, &a);
	if (q < 0)
		fail("mq_open q1");
	char msg[256];
	for (int i = 0; i < 9; i++) {
		int n = snprintf(msg, sizeof(msg), "msg %d", i);
		if (mq_send(q, msg, n, i % 4) < 0)
			fail("mq_send %d", i);
	}
	if (mq_send(q, "", 0, 31) < 0) /* an empty one, highest priority */
		fail("empty mq_send");
	/* the second queue: closed by us, messages only in the namespace */
	struct mq_attr b = {.mq_maxmsg = 3, .mq_msgsize = 8000};
	mqd_t q2 = mq_open("/zdtm-q2", O_CREAT | O_EXCL | O_WRONLY, 0600, &b);
	if (q2 < 0)
		fail("mq_open q2");
	memset(msg, 0xab, sizeof(msg));
	if (mq_send(q2, msg, 200, 7) < 0)
		fail("mq_send q2");
	if (fchown(q2, 55, 66) < 0)
		fail("fchown q2");
	mq_close(q2);
	/* a read-only, blocking descriptor of q1 */
	mqd_t qr = mq_open("/zdtm-q1", O_RDONLY);
	if (qr < 0)
		fail("mq_open ro");

	test_ready();
	test_waitsig();

	struct mq_attr g;
	if (mq_getattr(q, &g) < 0 || g.mq_maxmsg != 10 || g.mq_msgsize != 256 || g.mq_curmsgs != 10 ||
	    !(g.mq_flags & O_NONBLOCK))
		fail("q attrs: maxmsg %ld msgsize %ld curmsgs %ld flags %lx", g.mq_maxmsg, g.mq_msgsize,
		     g.mq_curmsgs, g.mq_flags);
	if (mq_getattr(qr, &g) < 0 || (g.mq_flags & O_NONBLOCK))
		fail("qr flags %lx", g.mq_flags);
	if (fcntl(qr, F_GETFL) < 0 || (fcntl(qr, F_GETFL) & O_ACCMODE) != O_RDONLY)
		fail("qr is not read-only any more");
	if (mq_send(qr, "x", 1, 0) == 0 || errno != EBADF)
		fail("qr can send");
	unsigned prio;
	if (mq_receive(qr, msg, sizeof(msg), &prio) != 0 || prio != 31)
		fail("first message: prio %u", prio);
	/* then by priority, FIFO within one */
	for (int p = 3; p >= 0; p--)
		for (int i = p; i < 9; i += 4) {
			char want[32];
			int n = snprintf(want, sizeof(want), "msg %d", i);
			ssize_t got = mq_receive(q, msg, sizeof(msg), &prio);
			if (got != n || memcmp(msg, want, n) || prio != (unsigned)p)
				fail("want %s prio %d, got %.*s prio %u", want, p, (int)got, msg, prio);
		}
	if (mq_receive(q, msg, sizeof(msg), &prio) >= 0 || errno != EAGAIN)
		fail("q1 not empty");
	/* the queue works: a send through one descriptor, received by the other */
	if (mq_send(q, "again", 5, 2) < 0 || mq_receive(qr, msg, sizeof(msg), &prio) != 5 || prio != 2)
		fail("send/receive after restore");
	q2 = mq_open("/zdtm-q2", O_RDONLY | O_NONBLOCK);
	if (q2 < 0)
		fail("q2 is gone");
	struct stat st;
	if (fstat(q2, &st) < 0 || st.st_uid != 55 || st.st_gid != 66 || (st.st_mode & 0777) != 0600)
		fail("q2 owner %d:%d mode %o", st.st_uid, st.st_gid, st.st_mode);
	if (mq_getattr(q2, &g) < 0 || g.mq_maxmsg != 3 || g.mq_msgsize != 8000 || g.mq_curmsgs != 1)
		fail("q2 attrs");
	char big[8000];
	if (mq_receive(q2, big, sizeof(big), &prio) != 200 || prio != 7 || (unsigned char)big[199] != 0xab)
		fail("q2 message");
	mq_unlink("/zdtm-q1");
	mq_unlink("/zdtm-q2");
	pass();
}
