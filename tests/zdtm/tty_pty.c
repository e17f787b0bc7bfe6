/*
 * A pty pair as a session's controlling terminal, with job control.
 *
 *   main (holds the master; sets termios and window size through it)
 *   `- L: setsid(), forks D, then opens the slave: L's controlling terminal
 *        |  also holds /dev/tty; writes "out-data\n" (queued for the master)
 *        |- D:  forked before L had a terminal: no controlling terminal
 *        |- G1: its own process group, the foreground one
 *        `- G2: its own process group, in the background
 *
 * Queued for the slave (canonical, no echo, VEOL ';'): "hello\n", "w1;",
 * an EOF line, and the unfinished "parti".  After restore: same index and
 * name, termios, window size, session, foreground group; the master reads
 * "out-data\r\n"; G1 reads the lines and, once main sends "al\n", "partial\n";
 * G2's read of the terminal gets SIGTTIN; D still has no terminal; L's
 * /dev/tty reaches the pty.
 */
#include "zdtmlib.h"
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>

static int results[2], cmds[2];

static void report(const char *who, const char *fmt, ...)
{
	char buf[256];
	int n = snprintf(buf, sizeof buf, "%s ", who);
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof buf - n, fmt, ap);
	va_end(ap);
	if (n > 200)
		n = 200;
	buf[n++] = '\n';
	if (write(results[1], buf, n) != n)
		_exit(3);
}

static void wait_cmd(void)
{
	char c;
	while (read(cmds[0], &c, 1) != 1)
		if (errno != EINTR)
			_exit(4);
}

static long stat_tty_nr(void)
{
	char buf[1024];
	int fd = open("/proc/self/stat", O_RDONLY);
	int n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	long v[5];
	if (!p || sscanf(p + 2, "%*c %ld %ld %ld %ld", &v[0], &v[1], &v[2], &v[3]) != 4)
		return -1;
	return v[3];
}

static long encode_dev(unsigned maj, unsigned min)
{
	return (min & 0xff) | (maj << 8) | ((min & ~0xffu) << 12);
}

static volatile sig_atomic_t got_ttin;
static void on_ttin(int s) { (void)s; got_ttin = 1; }

static int expect_read(int fd, const char *want, int wantlen, const char *who)
{
	char buf[128];
	int n = read(fd, buf, sizeof buf);
	if (n != wantlen || memcmp(buf, want, wantlen)) {
		report(who, "FAIL read %d bytes '%.*s', want '%.*s'", n, n > 0 ? n : 0, buf, wantlen, want);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	if (pipe(results) || pipe(cmds))
		fail("pipe");
	int master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) || unlockpt(master))
		fail("openpt");
	char name[64];
	strncpy(name, ptsname(master), sizeof name - 1);
	unsigned index;
	if (ioctl(master, TIOCGPTN, &index))
		fail("TIOCGPTN");

	struct termios t;
	if (tcgetattr(master, &t))
		fail("tcgetattr");
	t.c_lflag &= ~(ECHO | ECHOE | ECHOK);
	t.c_cc[VEOL] = ';';
	t.c_cc[VERASE] = 0x08;
	t.c_cc[VMIN] = 3;
	cfsetispeed(&t, B4800);
	cfsetospeed(&t, B9600);
	if (tcsetattr(master, TCSANOW, &t) || tcgetattr(master, &t))
		fail("tcsetattr");
	struct winsize ws = { .ws_row = 33, .ws_col = 111, .ws_xpixel = 7, .ws_ypixel = 9 };
	if (ioctl(master, TIOCSWINSZ, &ws))
		fail("TIOCSWINSZ");

	int ready[2];
	if (pipe(ready))
		fail("pipe");
	pid_t L = fork();
	if (L == 0) {
		close(master);
		setsid();
		pid_t D = fork();
		if (D == 0) {
			wait_cmd();
			long nr = stat_tty_nr();
			int fd = open("/dev/tty", O_RDWR);
			if (nr != 0)
				report("D", "FAIL tty_nr %ld", nr);
			else if (fd >= 0 || errno != ENXIO)
				report("D", "FAIL /dev/tty opened (%d, errno %d)", fd, errno);
			else if (getsid(0) != getppid())
				report("D", "FAIL sid %d", getsid(0));
			else
				report("D", "ok");
			_exit(0);
		}
		int slave = open(name, O_RDWR);
		if (slave < 0 || ioctl(slave, TIOCSCTTY, 0))
			_exit(10);
		int devtty = open("/dev/tty", O_RDWR);
		if (devtty < 0)
			_exit(11);
		pid_t G1 = fork();
		if (G1 == 0) {
			setpgid(0, 0);
			wait_cmd();
			if (tcgetpgrp(slave) != getpgrp())
				report("G1", "FAIL foreground %d, mine %d", tcgetpgrp(slave), getpgrp());
			else if (stat_tty_nr() != encode_dev(136, index))
				report("G1", "FAIL tty_nr %lx", stat_tty_nr());
			else if (!expect_read(slave, "hello\n", 6, "G1") && !expect_read(slave, "w1;", 3, "G1") &&
				 !expect_read(slave, "", 0, "G1") && !expect_read(slave, "partial\n", 8, "G1"))
				report("G1", "ok");
			_exit(0);
		}
		pid_t G2 = fork();
		if (G2 == 0) {
			setpgid(0, 0);
			struct sigaction sa = { .sa_handler = on_ttin };
			sigaction(SIGTTIN, &sa, NULL);
			wait_cmd();
			char c;
			int n = read(slave, &c, 1);
			if (n != -1 || errno != EINTR || !got_ttin)
				report("G2", "FAIL background read gave %d errno %d, SIGTTIN %d", n, errno, got_ttin);
			else if (stat_tty_nr() != encode_dev(136, index))
				report("G2", "FAIL tty_nr %lx", stat_tty_nr());
			else
				report("G2", "ok");
			_exit(0);
		}
		setpgid(G1, G1);
		setpgid(G2, G2);
		if (tcsetpgrp(slave, G1))
			_exit(12);
		if (write(slave, "out-data\n", 9) != 9)
			_exit(13);
		char c = 'r';
		if (write(ready[1], &c, 1) != 1)
			_exit(14);
		wait_cmd();
		struct stat st;
		char link[64] = "";
		unsigned dev = 0;
		snprintf(link, sizeof link, "/proc/self/fd/%d", devtty);
		char target[64] = "";
		if (readlink(link, target, sizeof target - 1) < 0)
			target[0] = 0;
		if (getsid(0) != getpid() || tcgetsid(slave) != getpid())
			report("L", "FAIL session %d/%d", getsid(0), tcgetsid(slave));
		else if (tcgetpgrp(slave) != G1)
			report("L", "FAIL foreground %d, want %d", tcgetpgrp(slave), G1);
		else if (strcmp(ttyname(slave), name))
			report("L", "FAIL ttyname %s", ttyname(slave));
		else if (stat_tty_nr() != encode_dev(136, index))
			report("L", "FAIL tty_nr %lx", stat_tty_nr());
		else if (fstat(devtty, &st) || st.st_rdev != makedev(5, 0) || strcmp(target, "/dev/tty"))
			report("L", "FAIL /dev/tty fd is %s", target);
		else if (ioctl(devtty, TIOCGDEV, &dev) || dev != encode_dev(136, index))
			report("L", "FAIL /dev/tty reaches %x", dev);
		else if (write(devtty, "via-devtty\n", 11) != 11)
			report("L", "FAIL write to /dev/tty");
		else
			report("L", "ok");
		while (wait(NULL) > 0)
			;
		_exit(0);
	}
	char c;
	if (read(ready[0], &c, 1) != 1)
		fail("leader did not get ready");
	if (write(master, "hello\nw1;\x04parti", 15) != 15)
		fail("write master");
	usleep(100000);
	test_ready();
	test_waitsig();

	struct termios t2;
	struct winsize ws2;
	unsigned index2 = -1;
	int v;
	if (strcmp(ptsname(master), name))
		fail("ptsname %s, was %s", ptsname(master), name);
	if (ioctl(master, TIOCGPTN, &index2) || index2 != index)
		fail("index %u, was %u", index2, index);
	if (tcgetattr(master, &t2))
		fail("tcgetattr");
	if (t2.c_iflag != t.c_iflag || t2.c_oflag != t.c_oflag || t2.c_cflag != t.c_cflag ||
	    t2.c_lflag != t.c_lflag || memcmp(t2.c_cc, t.c_cc, NCCS) ||
	    cfgetispeed(&t2) != cfgetispeed(&t) || cfgetospeed(&t2) != cfgetospeed(&t))
		fail("termios changed: lflag %x/%x cflag %x/%x", t2.c_lflag, t.c_lflag, t2.c_cflag, t.c_cflag);
	if (ioctl(master, TIOCGWINSZ, &ws2) || memcmp(&ws, &ws2, sizeof ws))
		fail("winsize %dx%d", ws2.ws_row, ws2.ws_col);
	if (ioctl(master, TIOCGPTLCK, &v) || v)
		fail("locked %d", v);
	if (ioctl(master, TIOCGPKT, &v) || v)
		fail("packet %d", v);
	pid_t sid = -1;
	if (ioctl(master, TIOCGSID, &sid) || sid != L)
		fail("session of the terminal %d, want %d", sid, L);
	pid_t fg = tcgetpgrp(master);
	if (fg <= 0 || fg == L)
		fail("foreground group %d", fg);

	int fl = fcntl(master, F_GETFL);
	fcntl(master, F_SETFL, fl | O_NONBLOCK);
	char buf[256];
	int n = read(master, buf, sizeof buf);
	if (n != 10 || memcmp(buf, "out-data\r\n", 10))
		fail("master read %d '%.*s'", n, n > 0 ? n : 0, buf);
	if (write(master, "al\n", 3) != 3)
		fail("write master");
	for (int i = 0; i < 4; i++)
		if (write(cmds[1], "g", 1) != 1)
			fail("cmd");
	int ok = 0;
	char rep[1024];
	int have = 0;
	while (ok < 4) {
		n = read(results[0], rep + have, sizeof rep - 1 - have);
		if (n <= 0)
			fail("results");
		have += n;
		rep[have] = 0;
		ok = 0;
		for (char *p = rep; (p = strchr(p, '\n')); p++)
			ok++;
	}
	if (strstr(rep, "FAIL"))
		fail("children: %s", rep);
	usleep(100000);
	n = read(master, buf, sizeof buf);
	if (n != 12 || memcmp(buf, "via-devtty\r\n", 12))
		fail("/dev/tty write reached the master as %d '%.*s'", n, n > 0 ? n : 0, buf);
	waitpid(L, NULL, 0);
	pass();
}
