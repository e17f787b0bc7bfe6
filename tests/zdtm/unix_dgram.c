/* Unix datagram sockets: a server bound to a path (SO_PASSCRED) with datagrams
 * queued from several senders -- one an exited child, one named, one with forged
 * SCM_CREDENTIALS, an empty one and a large one; a named client connected to it with
 * replies queued (and one datagram that came before it connected); a datagram
 * socketpair.  After restore every datagram arrives once, in order, with its sender's
 * address and credentials, and the sockets still talk. */
#include "zdtmlib.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#define SRV "/zdtm/ud.sock"
#define LOG "/dev/zdtm-log" /* like /dev/log: in a tmpfs made afresh at restore */
#define NNAME "\0zdtm-ud-N"
#define CNAME "\0zdtm-ud-C"
#define LARGE 60000

static socklen_t mkaddr(struct sockaddr_un *a, const char *name, size_t len)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	memcpy(a->sun_path, name, len);
	return offsetof(struct sockaddr_un, sun_path) + len;
}

static void send_to(int fd, const void *buf, size_t len, const char *name, size_t nlen)
{
	struct sockaddr_un a;
	socklen_t al = mkaddr(&a, name, nlen);
	if (sendto(fd, buf, len, 0, (struct sockaddr *)&a, al) != (ssize_t)len)
		fail("sendto %s", name + (name[0] == 0));
}

static char rbuf[LARGE + 100];

/* Receive one datagram and check it: data, sender name (NULL: unnamed), credentials
 * (pid -1: not checked). */
static void expect(int fd, const char *data, size_t len, const char *from, size_t flen, pid_t pid,
		   uid_t uid, gid_t gid, const char *what)
{
	struct sockaddr_un a;
	char cbuf[CMSG_SPACE(sizeof(struct ucred))];
	struct iovec iov = {rbuf, sizeof(rbuf)};
	struct msghdr mh = {.msg_name = &a, .msg_namelen = sizeof(a), .msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT);
	if (n < 0)
		fail("%s: recvmsg", what);
	if ((size_t)n != len || memcmp(rbuf, data, len) || (mh.msg_flags & MSG_TRUNC))
		fail("%s: got %zd bytes '%.*s'", what, n, (int)(n > 20 ? 20 : n), rbuf);
	size_t got = mh.msg_namelen > offsetof(struct sockaddr_un, sun_path)
			     ? mh.msg_namelen - offsetof(struct sockaddr_un, sun_path) : 0;
	if (got && a.sun_path[0] && a.sun_path[got - 1] == 0)
		got--;
	if (from == NULL ? got != 0 : (got != flen || memcmp(a.sun_path, from, flen)))
		fail("%s: sender name '%.*s' (%zu bytes)", what, (int)got, a.sun_path + (got && !a.sun_path[0]), got);
	if (pid >= 0) {
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		if (!c || c->cmsg_type != SCM_CREDENTIALS)
			fail("%s: no credentials", what);
		struct ucred u;
		memcpy(&u, CMSG_DATA(c), sizeof(u));
		if (u.pid != pid || u.uid != uid || u.gid != gid)
			fail("%s: credentials pid %d uid %d gid %d, want %d %d %d", what, u.pid, u.uid, u.gid, pid, uid, gid);
	}
}

static void expect_empty(int fd, const char *what)
{
	if (recv(fd, rbuf, sizeof(rbuf), MSG_DONTWAIT) != -1 || errno != EAGAIN)
		fail("%s: more datagrams queued than expected", what);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	static char large[LARGE];
	for (int i = 0; i < LARGE; i++)
		large[i] = (char)(i * 31 + 1);
	struct sockaddr_un a;
	socklen_t al;
	int one = 1;
	pid_t me = getpid();

	unlink(SRV);
	int s = socket(AF_UNIX, SOCK_DGRAM, 0);
	al = mkaddr(&a, SRV, strlen(SRV));
	if (bind(s, (struct sockaddr *)&a, al))
		fail("bind server");
	setsockopt(s, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one));
	int sz = 1 << 20;
	setsockopt(s, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));

	int n = socket(AF_UNIX, SOCK_DGRAM, 0);
	al = mkaddr(&a, NNAME, sizeof(NNAME) - 1);
	if (bind(n, (struct sockaddr *)&a, al))
		fail("bind N");
	int u = socket(AF_UNIX, SOCK_DGRAM, 0);
	setsockopt(u, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));

	/* 1: from a child that exits before the checkpoint */
	pid_t child = fork();
	if (child == 0) {
		int c = socket(AF_UNIX, SOCK_DGRAM, 0);
		send_to(c, "from-dead-child", 15, SRV, strlen(SRV));
		_exit(0);
	}
	int st;
	if (waitpid(child, &st, 0) != child || st)
		fail("child");
	/* 2, 3: from N */
	send_to(n, "from-N", 6, SRV, strlen(SRV));
	send_to(n, "", 0, SRV, strlen(SRV));
	/* 4: forged credentials */
	{
		struct ucred cr = {.pid = me, .uid = 1234, .gid = 4321};
		char cbuf[CMSG_SPACE(sizeof(cr))];
		struct iovec iov = {"forged", 6};
		al = mkaddr(&a, SRV, strlen(SRV));
		struct msghdr mh = {.msg_name = &a, .msg_namelen = al, .msg_iov = &iov, .msg_iovlen = 1,
				    .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_CREDENTIALS;
		c->cmsg_len = CMSG_LEN(sizeof(cr));
		memcpy(CMSG_DATA(c), &cr, sizeof(cr));
		if (sendmsg(u, &mh, 0) != 6)
			fail("sendmsg forged");
	}
	/* 5: large */
	send_to(u, large, LARGE, SRV, strlen(SRV));

	/* a client: one datagram before it connects, then two replies from the server */
	int c = socket(AF_UNIX, SOCK_DGRAM, 0);
	al = mkaddr(&a, CNAME, sizeof(CNAME) - 1);
	if (bind(c, (struct sockaddr *)&a, al))
		fail("bind C");
	send_to(n, "early", 5, CNAME, sizeof(CNAME) - 1);
	al = mkaddr(&a, SRV, strlen(SRV));
	if (connect(c, (struct sockaddr *)&a, al))
		fail("connect C");
	send_to(s, "reply1", 6, CNAME, sizeof(CNAME) - 1);
	send_to(s, "reply2", 6, CNAME, sizeof(CNAME) - 1);

	/* a syslog-like socket in /dev with one message waiting */
	int lg = socket(AF_UNIX, SOCK_DGRAM, 0);
	al = mkaddr(&a, LOG, strlen(LOG));
	unlink(LOG);
	if (bind(lg, (struct sockaddr *)&a, al) || chmod(LOG, 0666))
		fail("bind " LOG);
	send_to(u, "<13>log line", 12, LOG, strlen(LOG));

	/* a socketpair */
	int dp[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, dp))
		fail("socketpair");
	if (send(dp[0], "a", 1, 0) != 1 || send(dp[0], "", 0, 0) != 0 || send(dp[0], "ccc", 3, 0) != 3 ||
	    send(dp[1], "z", 1, 0) != 1)
		fail("socketpair sends");

	test_ready();
	test_waitsig();

	expect(s, "from-dead-child", 15, NULL, 0, child, 0, 0, "1 (exited child)");
	expect(s, "from-N", 6, NNAME, sizeof(NNAME) - 1, me, 0, 0, "2 (N)");
	expect(s, "", 0, NNAME, sizeof(NNAME) - 1, me, 0, 0, "3 (empty)");
	expect(s, "forged", 6, NULL, 0, me, 1234, 4321, "4 (forged credentials)");
	expect(s, large, LARGE, NULL, 0, me, 0, 0, "5 (large)");
	expect_empty(s, "server");

	expect(c, "early", 5, NNAME, sizeof(NNAME) - 1, -1, 0, 0, "client early");
	expect(c, "reply1", 6, SRV, strlen(SRV), -1, 0, 0, "reply1");
	expect(c, "reply2", 6, SRV, strlen(SRV), -1, 0, 0, "reply2");
	expect_empty(c, "client");

	expect(dp[1], "a", 1, NULL, 0, -1, 0, 0, "pair a");
	expect(dp[1], "", 0, NULL, 0, -1, 0, 0, "pair empty");
	expect(dp[1], "ccc", 3, NULL, 0, -1, 0, 0, "pair ccc");
	expect_empty(dp[1], "pair 1");
	expect(dp[0], "z", 1, NULL, 0, -1, 0, 0, "pair z");
	expect_empty(dp[0], "pair 0");
	struct ucred cr;
	socklen_t cl = sizeof(cr);
	if (getsockopt(dp[1], SOL_SOCKET, SO_PEERCRED, &cr, &cl) || cr.pid != me)
		fail("socketpair SO_PEERCRED pid %d", cr.pid);

	/* still connected, still reachable */
	if (send(c, "hello", 5, 0) != 5)
		fail("client send");
	expect(s, "hello", 5, CNAME, sizeof(CNAME) - 1, me, 0, 0, "client -> server");
	al = sizeof(a);
	if (getpeername(c, (struct sockaddr *)&a, &al) || strcmp(a.sun_path, SRV))
		fail("client's peer name");
	int f = socket(AF_UNIX, SOCK_DGRAM, 0);
	send_to(f, "fresh", 5, SRV, strlen(SRV));
	expect(s, "fresh", 5, NULL, 0, me, 0, 0, "fresh sender");
	send_to(f, "toN", 3, NNAME, sizeof(NNAME) - 1);
	expect(n, "toN", 3, NULL, 0, -1, 0, 0, "to N");
	if (send(dp[1], "back", 4, 0) != 4)
		fail("pair send");
	expect(dp[0], "back", 4, NULL, 0, -1, 0, 0, "pair back");
	expect(lg, "<13>log line", 12, NULL, 0, -1, 0, 0, "log line");
	expect_empty(lg, "log");
	struct stat sb;
	if (stat(LOG, &sb) || !S_ISSOCK(sb.st_mode) || (sb.st_mode & 0777) != 0666)
		fail(LOG " is not there as it was (mode %o)", sb.st_mode);
	send_to(f, "more", 4, LOG, strlen(LOG));
	expect(lg, "more", 4, NULL, 0, -1, 0, 0, "new log line");
	unlink(SRV);
	pass();
}
