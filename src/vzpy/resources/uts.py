"""The container's UTS namespace: host name and NIS domain name.

The dump driver saves both (``uts_ns`` record, checkpoint/driver.py
``_dump_container_wide``) and the restore driver gives the host name to the
stub through ``SpawnSpec.hostname``; this module sets the domain name (and
the host name again, in case the spec's came from the config) in the new UTS
namespace, from a thread of ours that joined it, before any task exists.
"""

from __future__ import annotations

from ..sys import libc
from . import base


def _set_names(nodename: str | None, domainname: str | None) -> None:
    if nodename is not None:
        libc.sethostname(nodename)
    if domainname is not None:
        libc.setdomainname(domainname)


class UtsResource(base.CtResource):
    name = "uts_ns"
    order = 25

    def restore_early(self, rctx) -> None:
        if not rctx.img.has("uts_ns"):
            return
        rec = rctx.img.read("uts_ns")
        libc.run_in_ns(
            rctx.stub_pid, ("uts",), _set_names, rec.get("nodename"), rec.get("domainname")
        )


UTS_RESOURCE = base.register_ct_resource(UtsResource())
