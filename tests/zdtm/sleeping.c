/* A thread asleep in nanosleep and the main thread in sigsuspend both resume right. */
#include "zdtmlib.h"
#include <pthread.h>
#include <time.h>

static volatile int slept;
static void *sleeper(void *a)
{
	struct timespec ts = {3, 0};
	(void)a;
	int r = nanosleep(&ts, &ts);
	slept = r == 0 ? 1 : -errno;
	return NULL;
}

int main(int argc, char **argv)
{
	test_init(argc, argv);
	pthread_t t;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pthread_create(&t, NULL, sleeper, NULL);
	usleep(100000);
	test_ready();
	test_waitsig();
	pthread_join(t, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (slept != 1) fail("nanosleep returned %d", slept);
	if (t1.tv_sec < t0.tv_sec) fail("monotonic went back");
	pass();
}
