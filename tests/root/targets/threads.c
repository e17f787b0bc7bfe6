/* threads: a multi-threaded target.
 *
 * usage: threads [NTHREADS]
 *
 * Starts NTHREADS threads that sleep 10 ms in a loop and bump their own
 * counter, then prints "READY <pid> <tid1> <tid2> ...\n".  Each 20 ms the
 * main thread writes "beat <n> <sum of counters>\n".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAXT 16

static volatile long counters[MAXT];
static volatile pid_t tids[MAXT];

static void *worker(void *arg)
{
	long i = (long)arg;
	struct timespec req = {0, 10000000L};

	tids[i] = (pid_t)syscall(SYS_gettid);
	for (;;) {
		nanosleep(&req, NULL);
		counters[i]++;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int nt = argc > 1 ? atoi(argv[1]) : 3;
	char line[512];
	int len;
	pthread_t th;

	if (nt > MAXT)
		nt = MAXT;
	for (long i = 0; i < nt; i++)
		pthread_create(&th, NULL, worker, (void *)i);
	for (int i = 0; i < nt; i++)
		while (!tids[i])
			usleep(1000);
	len = snprintf(line, sizeof(line), "READY %d", getpid());
	for (int i = 0; i < nt; i++)
		len += snprintf(line + len, sizeof(line) - len, " %d", tids[i]);
	len += snprintf(line + len, sizeof(line) - len, "\n");
	if (write(1, line, len) != len)
		return 1;
	for (long n = 1;; n++) {
		struct timespec req = {0, 20000000L};
		long sum = 0;

		nanosleep(&req, NULL);
		for (int i = 0; i < nt; i++)
			sum += counters[i];
		len = snprintf(line, sizeof(line), "beat %ld %ld\n", n, sum);
		if (write(1, line, len) != len)
			return 1;
	}
}
