/* Threads keep their tids, TLS and signal masks. */
#include "zdtmlib.h"
#include <pthread.h>
#include <sys/syscall.h>

#define N 4
static __thread long tls_val;
static pid_t tids[N];
static volatile long seen[N];
static volatile int stop;
static pthread_barrier_t bar;

static void *worker(void *arg)
{
	long i = (long)arg;
	tls_val = 1000 + i;
	tids[i] = syscall(SYS_gettid);
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGUSR1 + (i % 2));
	pthread_sigmask(SIG_BLOCK, &m, NULL);
	pthread_barrier_wait(&bar);
	while (!stop) usleep(10000);
	sigset_t cur;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	if (syscall(SYS_gettid) == tids[i] && tls_val == 1000 + i && sigismember(&cur, SIGUSR1 + (i % 2)))
		seen[i] = 1;
	return NULL;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	pthread_t t[N];
	pthread_barrier_init(&bar, NULL, N + 1);
	for (long i = 0; i < N; i++) pthread_create(&t[i], NULL, worker, (void *)i);
	pthread_barrier_wait(&bar);
	tls_val = 7;
	test_ready();
	test_waitsig();
	stop = 1;
	for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
	for (int i = 0; i < N; i++) if (seen[i] != 1) fail("thread %d state lost", i);
	if (tls_val != 7) fail("main tls");
	pass();
}
