/* clock_gettime/gettimeofday through the vdso keep working after restore. */
#include "zdtmlib.h"
#include <sys/time.h>
#include <time.h>

int main(int argc, char **argv)
{
	test_init(argc, argv);
	struct timespec a, b;
	struct timeval tv;
	clock_gettime(CLOCK_REALTIME, &a);
	test_ready();
	test_waitsig();
	for (int i = 0; i < 1000; i++) {
		clock_gettime(CLOCK_MONOTONIC, &b);
		gettimeofday(&tv, NULL);
	}
	clock_gettime(CLOCK_REALTIME, &b);
	if (b.tv_sec < a.tv_sec) fail("realtime went back");
	if (tv.tv_sec < a.tv_sec) fail("gettimeofday went back");
	pass();
}
