/* The UTS namespace: host name and domain name set inside the container survive. */
#include "zdtmlib.h"
#include <sys/utsname.h>

#define HOST "zdtm-uts-host.example"
#define DOMAIN "zdtm.nis.domain"

int main(int argc, char **argv)
{
	test_init(argc, argv);
	if (sethostname(HOST, strlen(HOST)) < 0)
		fail("sethostname");
	if (setdomainname(DOMAIN, strlen(DOMAIN)) < 0)
		fail("setdomainname");
	test_ready();
	test_waitsig();
	struct utsname u;
	if (uname(&u) < 0)
		fail("uname");
	if (strcmp(u.nodename, HOST))
		fail("host name is %s", u.nodename);
	if (strcmp(u.domainname, DOMAIN))
		fail("domain name is %s", u.domainname);
	char buf[128] = "";
	int fd = open("/proc/sys/kernel/domainname", O_RDONLY);
	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) <= 0 || strncmp(buf, DOMAIN "\n", strlen(DOMAIN) + 1))
		fail("/proc/sys/kernel/domainname is %s", buf);
	pass();
}
