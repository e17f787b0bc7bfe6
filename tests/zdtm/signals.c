/* Handlers (with flags and masks), blocked masks, pending signals with siginfo, sigaltstack. */
#include "zdtmlib.h"

static volatile int got_val = -1, got_usr1;
static char altstack[65536];
static void h2(int sig, siginfo_t *si, void *uc) { (void)sig; (void)uc; got_val = si->si_value.sival_int; }
static void h1(int sig) { (void)sig; got_usr1++; }

int main(int argc, char **argv)
{
	test_init(argc, argv);
	struct sigaction sa = {0};
	sa.sa_sigaction = h2;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaddset(&sa.sa_mask, SIGHUP);
	sigaction(SIGRTMIN + 3, &sa, NULL);
	signal(SIGUSR1, h1);
	signal(SIGPIPE, SIG_IGN);
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
	sigaltstack(&ss, NULL);
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGRTMIN + 3);
	sigaddset(&m, SIGUSR2);
	sigprocmask(SIG_BLOCK, &m, NULL);
	union sigval v = {.sival_int = 4242};
	sigqueue(getpid(), SIGRTMIN + 3, v);
	test_ready();
	test_waitsig();
	struct sigaction o;
	sigaction(SIGRTMIN + 3, NULL, &o);
	if (o.sa_sigaction != h2 || !(o.sa_flags & SA_SIGINFO) || !(o.sa_flags & SA_RESTART)) fail("sigaction lost");
	if (!sigismember(&o.sa_mask, SIGHUP)) fail("sa_mask lost");
	sigaction(SIGPIPE, NULL, &o);
	if (o.sa_handler != SIG_IGN) fail("SIG_IGN lost");
	sigset_t cur, pend;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	if (!sigismember(&cur, SIGUSR2) || !sigismember(&cur, SIGRTMIN + 3)) fail("mask lost");
	sigpending(&pend);
	if (!sigismember(&pend, SIGRTMIN + 3)) fail("pending signal lost");
	if (sigismember(&pend, SIGCHLD)) fail("stray SIGCHLD pending");
	stack_t os2;
	sigaltstack(NULL, &os2);
	if (os2.ss_sp != altstack || os2.ss_size != sizeof altstack) fail("sigaltstack lost");
	sigprocmask(SIG_UNBLOCK, &m, NULL);
	if (got_val != 4242) fail("siginfo value %d", got_val);
	kill(getpid(), SIGUSR1);
	if (got_usr1 != 1) fail("SIGUSR1 handler");
	pass();
}
