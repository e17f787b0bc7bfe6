/*
 * Pty pairs in every state vzpy saves, none of them a controlling terminal:
 *
 *   locked   locked master, slave never opened (opening it fails with EIO)
 *   never    unlocked, slave never opened: the master reads EAGAIN, not EIO
 *   pkt      packet mode, both ends exclusive, locked termios, O_NONBLOCK master
 *   closed   the slave was opened, written to and closed: "bye\r\n" then EIO
 *   raw      raw mode; all 256 byte values queued for the slave, some for the master
 *   canon    canonical with echo: an erased char, a ^V-escaped ^D, an unfinished line
 *   hung     a slave whose master was closed: reads 0, writes EIO, "(deleted)"
 *   gap      three pairs with the middle one closed: indices stay as they were
 *   hungtty  a child's /dev/tty whose terminal was hung up (master closed):
 *            reads 0, writes EIO, still /dev/tty; the child has no terminal
 */
#include "zdtmlib.h"
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>

static int openpt(int unlock, unsigned *index)
{
	int m = posix_openpt(O_RDWR | O_NOCTTY);
	if (m < 0 || grantpt(m))
		fail("posix_openpt");
	if (unlock && unlockpt(m))
		fail("unlockpt");
	if (ioctl(m, TIOCGPTN, index))
		fail("TIOCGPTN");
	return m;
}

static int open_slave(int m)
{
	int s = open(ptsname(m), O_RDWR | O_NOCTTY);
	if (s < 0)
		fail("open %s", ptsname(m));
	return s;
}

static void check_index(int m, unsigned want, const char *what)
{
	unsigned got = -1;
	if (ioctl(m, TIOCGPTN, &got) || got != want)
		fail("%s: index %u, was %u", what, got, want);
}

static void nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Read exactly want (non-blocking fd); fail on anything else. */
static void expect(int fd, const void *want, int n, const char *what)
{
	char buf[1024];
	int got = read(fd, buf, sizeof buf);
	if (got != n || memcmp(buf, want, n))
		fail("%s: read %d bytes '%.*s', want %d '%.*s'", what, got, got > 0 ? got : 0, buf, n,
		     n, (const char *)want);
}

static void expect_errno(int fd, int err, const char *what)
{
	char c;
	int got = read(fd, &c, 1);
	if (got != -1 || errno != err)
		fail("%s: read gave %d (errno %d), want errno %d", what, got, errno, err);
}

int main(int argc, char **argv)
{
	unsigned i_locked, i_never, i_pkt, i_closed, i_raw, i_canon, i_hung, i_gap[3];
	test_init(argc, argv);

	int m_locked = openpt(0, &i_locked);

	int m_never = openpt(1, &i_never);

	int m_pkt = openpt(1, &i_pkt);
	int s_pkt = open_slave(m_pkt);
	int one = 1;
	struct termios lk, lk2;
	memset(&lk, 0, sizeof lk);
	lk.c_lflag = ECHO;
	lk.c_cc[VINTR] = 0xff;
	if (ioctl(m_pkt, TIOCPKT, &one) || ioctl(m_pkt, TIOCEXCL) || ioctl(s_pkt, TIOCEXCL) ||
	    ioctl(s_pkt, TIOCSLCKTRMIOS, &lk))
		fail("packet/exclusive/locked termios");
	nonblock(m_pkt);

	int m_closed = openpt(1, &i_closed);
	int s = open_slave(m_closed);
	if (write(s, "bye\n", 4) != 4)
		fail("write");
	close(s);

	int m_raw = openpt(1, &i_raw);
	int s_raw = open_slave(m_raw);
	struct termios raw;
	tcgetattr(s_raw, &raw);
	cfmakeraw(&raw);
	raw.c_cc[VMIN] = 1;
	raw.c_cc[VTIME] = 0;
	if (tcsetattr(s_raw, TCSANOW, &raw))
		fail("cfmakeraw");
	unsigned char all[256];
	for (int i = 0; i < 256; i++)
		all[i] = i;
	if (write(m_raw, all, 256) != 256 || write(s_raw, "\r\n\x03\x7f", 4) != 4)
		fail("write raw");

	int m_canon = openpt(1, &i_canon);
	int s_canon = open_slave(m_canon);
	/* default termios: ICANON ECHO ECHOE ICRNL IEXTEN ISIG */
	if (write(m_canon, "abc\x7f" "d\r" "x\x16\x04y\n" "zz", 13) != 13)
		fail("write canon");

	int m_hung = openpt(1, &i_hung);
	int s_hung = open_slave(m_hung);
	close(m_hung);

	int m_gap[3];
	for (int i = 0; i < 3; i++)
		m_gap[i] = openpt(1, &i_gap[i]);
	close(m_gap[1]);

	unsigned i_hc;
	int hc_ready[2];
	if (pipe(hc_ready))
		fail("pipe");
	int m_hc = openpt(1, &i_hc);
	pid_t hc = fork();
	if (hc == 0) {
		signal(SIGHUP, SIG_IGN); /* the hangup signals the session leader */
		setsid();
		int s = open(ptsname(m_hc), O_RDWR); /* becomes the controlling terminal */
		int t = open("/dev/tty", O_RDWR);
		if (s < 0 || t < 0)
			_exit(20);
		close(s);
		close(m_hc); /* the parent's close must be the last one */
		if (write(hc_ready[1], "r", 1) != 1)
			_exit(21);
		test_waitsig();
		char c;
		struct stat st;
		if (read(t, &c, 1) != 0)
			_exit(22);
		if (write(t, "x", 1) != -1 || errno != EIO)
			_exit(23);
		if (fstat(t, &st) || st.st_rdev != makedev(5, 0))
			_exit(24);
		if (open("/dev/tty", O_RDWR) >= 0)
			_exit(25);
		_exit(0);
	}
	char r;
	if (read(hc_ready[0], &r, 1) != 1)
		fail("hungtty child");
	close(m_hc);

	usleep(100000);
	nonblock(m_never);
	nonblock(m_closed);
	nonblock(m_raw);
	nonblock(s_raw);
	nonblock(m_canon);
	nonblock(s_canon);
	/* Before: the echo queued at m_canon, to compare after restore. */
	char echo1[256];
	int echo1_n = read(m_canon, echo1, sizeof echo1);
	if (echo1_n <= 0)
		fail("no echo");
	/* put the echo back through the slave's output: it is queued again for after restore */
	struct termios t;
	tcgetattr(s_canon, &t);
	struct termios t_raw_out = t;
	t_raw_out.c_oflag &= ~OPOST;
	tcsetattr(s_canon, TCSANOW, &t_raw_out);
	if (write(s_canon, echo1, echo1_n) != echo1_n)
		fail("requeue echo");
	tcsetattr(s_canon, TCSANOW, &t);

	test_ready();
	test_waitsig();

	int v = -1;
	check_index(m_locked, i_locked, "locked");
	if (ioctl(m_locked, TIOCGPTLCK, &v) || v != 1)
		fail("locked: lock %d", v);
	if (open(ptsname(m_locked), O_RDWR | O_NOCTTY) >= 0 || errno != EIO)
		fail("locked: slave opened (errno %d)", errno);
	if (unlockpt(m_locked))
		fail("unlockpt");
	close(open_slave(m_locked));

	check_index(m_never, i_never, "never");
	expect_errno(m_never, EAGAIN, "never: master");

	check_index(m_pkt, i_pkt, "pkt");
	if (ioctl(m_pkt, TIOCGPKT, &v) || v != 1)
		fail("pkt: packet mode %d", v);
	if (ioctl(m_pkt, TIOCGEXCL, &v) || v != 1)
		fail("pkt: master exclusive %d", v);
	if (ioctl(s_pkt, TIOCGEXCL, &v) || v != 1)
		fail("pkt: slave exclusive %d", v);
	memset(&lk2, 0, sizeof lk2);
	/* the kernel's struct termios has 19 control characters, glibc's 32 */
	if (ioctl(s_pkt, TIOCGLCKTRMIOS, &lk2) || lk2.c_lflag != lk.c_lflag ||
	    memcmp(lk2.c_cc, lk.c_cc, 19))
		fail("pkt: locked termios %x", lk2.c_lflag);
	if (!(fcntl(m_pkt, F_GETFL) & O_NONBLOCK))
		fail("pkt: master lost O_NONBLOCK");
	expect_errno(m_pkt, EAGAIN, "pkt: master");
	if (write(s_pkt, "p", 1) != 1)
		fail("write");
	usleep(50000);
	expect(m_pkt, "\0p", 2, "pkt: packet read");

	check_index(m_closed, i_closed, "closed");
	expect(m_closed, "bye\r\n", 5, "closed: queued output");
	expect_errno(m_closed, EIO, "closed: master after the data");

	check_index(m_raw, i_raw, "raw");
	unsigned char got[512];
	int n = read(s_raw, got, sizeof got);
	if (n != 256 || memcmp(got, all, 256))
		fail("raw: slave read %d bytes", n);
	expect(m_raw, "\r\n\x03\x7f", 4, "raw: master");
	struct termios raw2;
	tcgetattr(s_raw, &raw2);
	if (raw2.c_lflag != raw.c_lflag || raw2.c_iflag != raw.c_iflag || raw2.c_oflag != raw.c_oflag)
		fail("raw: termios");

	check_index(m_canon, i_canon, "canon");
	expect(m_canon, echo1, echo1_n, "canon: echo queued for the master");
	expect(s_canon, "abd\n", 4, "canon: first line");
	expect(s_canon, "x\x04y\n", 4, "canon: line with an escaped ^D");
	expect_errno(s_canon, EAGAIN, "canon: unfinished line");
	if (write(m_canon, "\r", 1) != 1)
		fail("write");
	usleep(50000);
	expect(s_canon, "zz\n", 3, "canon: finished line");
	expect(m_canon, "\r\n", 2, "canon: echo of the newline");

	char link[64], target[64] = "";
	snprintf(link, sizeof link, "/proc/self/fd/%d", s_hung);
	if (readlink(link, target, sizeof target - 1) < 0 || !strstr(target, "(deleted)"))
		fail("hung: link %s", target);
	char c;
	if (read(s_hung, &c, 1) != 0)
		fail("hung: read did not give EOF");
	if (write(s_hung, "x", 1) != -1 || errno != EIO)
		fail("hung: write did not fail with EIO");

	check_index(m_gap[0], i_gap[0], "gap 0");
	check_index(m_gap[2], i_gap[2], "gap 2");

	int status;
	kill(hc, SIGTERM);
	if (waitpid(hc, &status, 0) != hc || !WIFEXITED(status) || WEXITSTATUS(status))
		fail("hungtty: child status %x", status);
	pass();
}
