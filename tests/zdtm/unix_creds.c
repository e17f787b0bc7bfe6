/* Credentials the kernel keeps for unix sockets, of processes other than the holder:
 * a socketpair made by a child running as uid 1000/gid 500 with groups 100,200, which
 * passed both ends to us and exited; a connection waiting in our accept queue from a
 * child running as uid 2000; a datagram it sent with its credentials.  After restore
 * SO_PEERCRED, SO_PEERGROUPS, SCM_CREDENTIALS and the sockets' owners are the same. */
#include "zdtmlib.h"
#include <grp.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#define LNAME "\0zdtm-ucred-l"
#define DNAME "\0zdtm-ucred-d"

static socklen_t mkaddr(struct sockaddr_un *a, const char *name, size_t len)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	memcpy(a->sun_path, name, len);
	return offsetof(struct sockaddr_un, sun_path) + len;
}

static void become(uid_t uid, gid_t gid, int ngroups, const gid_t *groups)
{
	if (setgroups(ngroups, groups) || setresgid(gid, gid, gid) || setresuid(uid, uid, uid))
		_exit(10);
}

static void check_cred(int fd, pid_t pid, uid_t uid, gid_t gid, const char *what)
{
	struct ucred c;
	socklen_t l = sizeof(c);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &l))
		fail("%s: SO_PEERCRED", what);
	if (c.pid != pid || c.uid != uid || c.gid != gid)
		fail("%s: SO_PEERCRED %d/%d/%d, want %d/%d/%d", what, c.pid, c.uid, c.gid, pid, uid, gid);
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	struct sockaddr_un a;
	socklen_t al;
	int one = 1;

	/* a socketpair made by a child as uid 1000, passed to us over a channel */
	int ch[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, ch))
		fail("channel");
	pid_t maker = fork();
	if (maker == 0) {
		static const gid_t g[] = {100, 200};
		become(1000, 500, 2, g);
		int sp[2];
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp))
			_exit(11);
		char cbuf[CMSG_SPACE(2 * sizeof(int))];
		struct iovec iov = {"p", 1};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(2 * sizeof(int));
		memcpy(CMSG_DATA(c), sp, sizeof(sp));
		if (sendmsg(ch[1], &mh, 0) != 1)
			_exit(12);
		_exit(0);
	}
	int st;
	if (waitpid(maker, &st, 0) != maker || st)
		fail("maker exited with %x", st);
	int sp[2];
	{
		char b, cbuf[CMSG_SPACE(2 * sizeof(int))];
		struct iovec iov = {&b, 1};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
		if (recvmsg(ch[0], &mh, 0) != 1 || !CMSG_FIRSTHDR(&mh))
			fail("receive the socketpair");
		memcpy(sp, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(sp));
	}

	/* a listener and a datagram socket of ours; a child as uid 2000 connects and sends */
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	al = mkaddr(&a, LNAME, sizeof(LNAME) - 1);
	if (bind(l, (struct sockaddr *)&a, al) || listen(l, 2))
		fail("listener");
	int d = socket(AF_UNIX, SOCK_DGRAM, 0);
	al = mkaddr(&a, DNAME, sizeof(DNAME) - 1);
	if (bind(d, (struct sockaddr *)&a, al))
		fail("bind d");
	setsockopt(d, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one));
	int go[2], ready[2];
	if (pipe(go) || pipe(ready))
		fail("pipe");
	pid_t client = fork();
	if (client == 0) {
		become(2000, 2000, 0, NULL);
		int c = socket(AF_UNIX, SOCK_STREAM, 0);
		al = mkaddr(&a, LNAME, sizeof(LNAME) - 1);
		if (connect(c, (struct sockaddr *)&a, al))
			_exit(21);
		int u = socket(AF_UNIX, SOCK_DGRAM, 0);
		al = mkaddr(&a, DNAME, sizeof(DNAME) - 1);
		if (sendto(u, "as-2000", 7, 0, (struct sockaddr *)&a, al) != 7)
			_exit(22);
		char x;
		if (write(ready[1], "r", 1) != 1 || read(go[0], &x, 1) != 1)
			_exit(23);
		if (write(c, "hi", 2) != 2)
			_exit(24);
		_exit(0);
	}
	char x;
	if (read(ready[0], &x, 1) != 1)
		fail("client not ready");

	test_ready();
	test_waitsig();

	check_cred(sp[0], maker, 1000, 500, "socketpair of the exited uid-1000 child");
	check_cred(sp[1], maker, 1000, 500, "socketpair, other end");
	gid_t groups[8];
	socklen_t gl = sizeof(groups);
	if (getsockopt(sp[0], SOL_SOCKET, SO_PEERGROUPS, groups, &gl) || gl != 2 * sizeof(gid_t) ||
	    groups[0] != 100 || groups[1] != 200)
		fail("SO_PEERGROUPS (%u bytes)", gl);
	struct stat sb;
	if (fstat(sp[0], &sb) || sb.st_uid != 1000 || sb.st_gid != 500)
		fail("socket owner %d/%d", sb.st_uid, sb.st_gid);
	if (write(sp[0], "ok", 2) != 2 || read(sp[1], &x, 1) != 1)
		fail("socketpair broken");

	int acc = accept(l, NULL, NULL);
	if (acc < 0)
		fail("the waiting connection");
	check_cred(acc, client, 2000, 2000, "connection from the uid-2000 child");

	char buf[16], cbuf[CMSG_SPACE(sizeof(struct ucred))];
	struct iovec iov = {buf, sizeof(buf)};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	if (recvmsg(d, &mh, MSG_DONTWAIT) != 7 || memcmp(buf, "as-2000", 7) || !CMSG_FIRSTHDR(&mh))
		fail("datagram from the uid-2000 child");
	struct ucred u;
	memcpy(&u, CMSG_DATA(CMSG_FIRSTHDR(&mh)), sizeof(u));
	if (u.pid != client || u.uid != 2000 || u.gid != 2000)
		fail("SCM_CREDENTIALS %d/%d/%d", u.pid, u.uid, u.gid);

	if (write(go[1], "g", 1) != 1 || read(acc, buf, 2) != 2 || memcmp(buf, "hi", 2))
		fail("data from the client");
	if (waitpid(client, &st, 0) != client || st)
		fail("client exited with %x", st);
	pass();
}
