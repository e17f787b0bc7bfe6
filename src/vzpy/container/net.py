"""venet-style container networking (DESIGN.md "Containers").

A container gets one veth pair: ``venet0`` inside, holding the container's IPs
as /32s with ``default dev venet0``; the host end (``veth<CTID>.0``) has no
address, answers the container's ARP requests (proxy_arp) and carries a /32
route per container IP.  On the node's LAN devices a proxy neighbour entry
per IP makes the node answer ARP for the container, and a gratuitous ARP
announces it (start, restore, migration), so LAN peers follow the IP when the
container moves.

Everything here runs in the caller's network namespace (the node's), except
the container-side setup, which runs in a thread that joined the container's
netns.  MACs are derived from the CTID so a restored or migrated container
keeps them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct

from ..sys.libc import run_in_netns

CT_IFNAME = "venet0"


def IPRoute():  # noqa: N802 - stands in for pyroute2.IPRoute
    """pyroute2 costs ~80 ms to import; only commands that touch the network pay it."""
    from pyroute2 import IPRoute as _IPRoute

    return _IPRoute()


NTF_PROXY = 0x08
IFF_NOARP = 0x80
IFF_LOOPBACK = 0x8
IFF_UP = 0x1


def host_ifname(ctid: int) -> str:
    name = f"veth{ctid}.0"
    return name if len(name) <= 15 else f"vz{ctid}"


def ct_alias(ctid: int) -> str:
    return f"vzpy:{ctid}"


def mac_for(ctid: int, side: str) -> str:
    """Stable MAC from the CTID; 00:18:51 is the OUI OpenVZ used for veth."""
    h = hashlib.sha256(f"{ctid}:{side}".encode()).digest()
    return f"00:18:51:{h[0]:02x}:{h[1]:02x}:{h[2]:02x}"


def split_ip(addr: str) -> tuple[str, int]:
    """'10.0.0.1/24' -> ('10.0.0.1', 32): container IPs are always host routes."""
    ip = addr.split("/")[0]
    obj = ipaddress.ip_address(ip)
    return str(obj), 32 if obj.version == 4 else 128


def _sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        pass


def lan_devices(ipr, configured: str | None = None) -> list[tuple[int, str]]:
    """Devices to announce container IPs on: NEIGHBOUR_DEVS, or every ARP-capable
    up device with an IPv4 address that is not a container's host veth."""
    wanted = None
    if configured and configured not in ("detect", "all"):
        wanted = set(configured.split())
    have_addr = {a["index"] for a in ipr.get_addr(family=socket.AF_INET)}
    out = []
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME")
        flags = link["flags"]
        if wanted is not None:
            if name in wanted:
                out.append((link["index"], name))
            continue
        alias = link.get_attr("IFLA_IFALIAS") or ""
        if flags & (IFF_LOOPBACK | IFF_NOARP) or not flags & IFF_UP:
            continue
        if alias.startswith("vzpy:") or link["index"] not in have_addr:
            continue
        out.append((link["index"], name))
    return out


def setup_host_side(ctid: int, netns_pid: int, ips: list[str], neighbour_devs: str | None) -> None:
    """Create the veth pair, move its inner end into the container and route its IPs."""
    hname = host_ifname(ctid)
    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=hname):
            ipr.link("del", index=idx)
        ipr.link(
            "add",
            ifname=hname,
            kind="veth",
            address=mac_for(ctid, "host"),
            peer={"ifname": CT_IFNAME, "address": mac_for(ctid, "ct"), "net_ns_pid": netns_pid},
        )
        idx = ipr.link_lookup(ifname=hname)[0]
        ipr.link("set", index=idx, ifalias=ct_alias(ctid))
        ipr.link("set", index=idx, state="up")
        _sysctl("/proc/sys/net/ipv4/ip_forward", "1")
        _sysctl(f"/proc/sys/net/ipv4/conf/{hname}/proxy_arp", "1")
        # The container ARPs for every peer (venet: all on-link) and only this proxy
        # answers: without this each answer waits a random 0-0.8 s (neigh proxy_delay),
        # which a restored container pays once per connection (its neighbour cache
        # starts empty): measured as up to 0.55 s more client outage per migration.
        _sysctl(f"/proc/sys/net/ipv4/neigh/{hname}/proxy_delay", "0")
        _sysctl(f"/proc/sys/net/ipv4/conf/{hname}/forwarding", "1")
        add_routes(ipr, idx, ips)
    announce(ctid, ips, neighbour_devs)


def add_routes(ipr, idx: int, ips: list[str]) -> None:
    for addr in ips:
        ip, plen = split_ip(addr)
        fam = socket.AF_INET6 if plen == 128 else socket.AF_INET
        ipr.route("replace", dst=ip, dst_len=plen, oif=idx, family=fam)


def announce(ctid: int, ips: list[str], neighbour_devs: str | None) -> None:
    """Proxy-ARP entries on the LAN devices, then a gratuitous ARP per IP."""
    with IPRoute() as ipr:
        devs = lan_devices(ipr, neighbour_devs)
        for addr in ips:
            ip, plen = split_ip(addr)
            if plen != 32:
                continue
            for idx, _name in devs:
                try:
                    ipr.neigh("replace", dst=ip, ifindex=idx, flags=NTF_PROXY)
                except Exception:  # pyroute2 raises NetlinkError; a dev may vanish
                    pass
        for idx, name in devs:
            link = ipr.get_links(idx)[0]
            mac = link.get_attr("IFLA_ADDRESS")
            for addr in ips:
                ip, plen = split_ip(addr)
                if plen == 32 and mac:
                    send_garp(name, mac, ip)


def withdraw(ctid: int, ips: list[str], neighbour_devs: str | None = None) -> None:
    """Stop answering for the container's IPs on this node (routes and proxy ARP)."""
    with IPRoute() as ipr:
        for addr in ips:
            try:
                ip, plen = split_ip(addr)
            except ValueError:
                continue
            if plen == 32:
                for link in ipr.get_links():
                    try:
                        ipr.neigh("del", dst=ip, ifindex=link["index"], flags=NTF_PROXY)
                    except Exception:  # not present on that device
                        pass
            try:
                fam = socket.AF_INET6 if plen == 128 else socket.AF_INET
                for r in ipr.get_routes(family=fam, dst=ip, dst_len=plen):
                    oif = r.get_attr("RTA_OIF")
                    link = ipr.get_links(oif)[0] if oif else None
                    if link is not None and (link.get_attr("IFLA_IFALIAS") or "") == ct_alias(ctid):
                        ipr.route("del", dst=ip, dst_len=plen, oif=oif, family=fam)
            except Exception:  # route already gone with its device
                pass


def teardown_host_side(ctid: int, ips: list[str], neighbour_devs: str | None = None) -> None:
    withdraw(ctid, ips, neighbour_devs)
    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=host_ifname(ctid)):
            try:
                ipr.link("del", index=idx)
            except Exception:  # vanished with the container's netns
                pass


def host_link_exists(ctid: int) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=host_ifname(ctid)))


def setup_ct_side(netns_pid: int, ctid: int, ips: list[str]) -> None:
    """Inside the container's netns: lo up, venet0 up with the IPs, default route."""

    def body() -> None:
        with IPRoute() as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=lo, state="up")
            idx = ipr.link_lookup(ifname=CT_IFNAME)[0]
            ipr.link("set", index=idx, state="up")
            for addr in ips:
                ip, plen = split_ip(addr)
                fam = socket.AF_INET6 if plen == 128 else socket.AF_INET
                ipr.addr("add", index=idx, address=ip, prefixlen=plen, family=fam)
            if any(split_ip(a)[1] == 32 for a in ips):
                ipr.route("replace", dst="0.0.0.0", dst_len=0, oif=idx, scope=253)
            if any(split_ip(a)[1] == 128 for a in ips):
                ipr.route("replace", dst="::", dst_len=0, oif=idx, family=socket.AF_INET6)

    run_in_netns(netns_pid, body)


def ct_add_ips(netns_pid: int, ips: list[str]) -> None:
    def body() -> None:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=CT_IFNAME)[0]
            for addr in ips:
                ip, plen = split_ip(addr)
                fam = socket.AF_INET6 if plen == 128 else socket.AF_INET
                ipr.addr("replace", index=idx, address=ip, prefixlen=plen, family=fam)
            ipr.route("replace", dst="0.0.0.0", dst_len=0, oif=idx, scope=253)

    run_in_netns(netns_pid, body)


def ct_del_ips(netns_pid: int, ips: list[str]) -> None:
    def body() -> None:
        with IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=CT_IFNAME)[0]
            for addr in ips:
                ip, plen = split_ip(addr)
                fam = socket.AF_INET6 if plen == 128 else socket.AF_INET
                try:
                    ipr.addr("del", index=idx, address=ip, prefixlen=plen, family=fam)
                except Exception:  # already absent
                    pass

    run_in_netns(netns_pid, body)


def send_garp(ifname: str, mac: str, ip: str) -> None:
    """Gratuitous ARP (request form, then reply form) for `ip` at `mac` on `ifname`."""
    hw = bytes.fromhex(mac.replace(":", ""))
    pa = socket.inet_aton(ip)
    bcast = b"\xff" * 6
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    except OSError:
        return
    try:
        s.bind((ifname, 0x0806))
        for op in (1, 2):
            arp = struct.pack(
                "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, hw, pa, bcast if op == 2 else b"\0" * 6, pa
            )
            s.send(bcast + hw + struct.pack("!H", 0x0806) + arp)
    except OSError:
        pass
    finally:
        s.close()


def node_ips_in_use(exclude_ctid: int | None = None) -> set[str]:
    """IPs configured on this node's running containers (from host routes we own)."""
    used: set[str] = set()
    with IPRoute() as ipr:
        aliases = {}
        for link in ipr.get_links():
            alias = link.get_attr("IFLA_IFALIAS") or ""
            if alias.startswith("vzpy:"):
                aliases[link["index"]] = int(alias[5:])
        for r in ipr.get_routes(family=socket.AF_INET):
            oif = r.get_attr("RTA_OIF")
            if oif in aliases and aliases[oif] != exclude_ctid:
                used.add(r.get_attr("RTA_DST"))
    return used


def read_sysctl_ip_forward() -> str:
    try:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            return f.read().strip()
    except OSError:
        return "?"


__all__ = [
    "host_ifname",
    "mac_for",
    "setup_host_side",
    "setup_ct_side",
    "teardown_host_side",
    "announce",
    "withdraw",
    "send_garp",
    "os",
]
