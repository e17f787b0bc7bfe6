/* Anonymous heap, bss, data and stack contents survive; brk is the same. */
#include "zdtmlib.h"
#include <stdint.h>
#include <sys/mman.h>

static uint64_t bss_area[4096];
static uint64_t data_area[512] = {1, 2, 3};

static uint64_t pattern(uint64_t i) { return i * 0x9E3779B97F4A7C15ULL ^ 0xdeadbeef; }

int main(int argc, char **argv)
{
	test_init(argc, argv);
	size_t n = (32 << 20) / 8;
	uint64_t *heap = malloc(n * 8);
	uint64_t stack_area[1024];
	uint64_t *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t *ro = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (size_t i = 0; i < n; i++) heap[i] = pattern(i);
	for (size_t i = 0; i < 4096; i++) bss_area[i] = pattern(i + 7);
	for (size_t i = 3; i < 512; i++) data_area[i] = pattern(i + 11);
	for (size_t i = 0; i < 1024; i++) stack_area[i] = pattern(i + 13);
	for (size_t i = 0; i < (1 << 17); i += 512) m[i] = pattern(i + 17); /* sparse */
	ro[5] = 0x1234;
	mprotect(ro, 8192, PROT_READ);
	void *brk0 = sbrk(0);
	test_ready();
	test_waitsig();
	for (size_t i = 0; i < n; i++) if (heap[i] != pattern(i)) fail("heap[%zu]", i);
	for (size_t i = 0; i < 4096; i++) if (bss_area[i] != pattern(i + 7)) fail("bss[%zu]", i);
	for (size_t i = 3; i < 512; i++) if (data_area[i] != pattern(i + 11)) fail("data[%zu]", i);
	if (data_area[0] != 1 || data_area[2] != 3) fail("data head");
	for (size_t i = 0; i < 1024; i++) if (stack_area[i] != pattern(i + 13)) fail("stack[%zu]", i);
	for (size_t i = 0; i < (1 << 17); i++) {
		uint64_t want = (i % 512 == 0) ? pattern(i + 17) : 0;
		if (m[i] != want) fail("mmap[%zu]", i);
	}
	if (ro[5] != 0x1234) fail("ro content");
	if (sbrk(0) != brk0) fail("brk moved %p -> %p", brk0, sbrk(0));
	/* the protection is kept: the page is still read-only */
	FILE *f = fopen("/proc/self/maps", "r");
	char line[512]; int found = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long s; char perms[5];
		if (sscanf(line, "%lx-%*lx %4s", &s, perms) == 2 && s == (unsigned long)ro) {
			found = 1;
			if (strncmp(perms, "r--p", 4)) fail("ro area is %s", perms);
		}
	}
	if (!found) fail("ro area missing");
	pass();
}
