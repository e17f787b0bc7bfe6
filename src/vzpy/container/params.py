"""`vzctl set` parameters: validation, live application, saving (reference §1.4).

Resource limits map onto the cgroup controllers that exist:
  --ram      PHYSPAGES  -> memory.limit_in_bytes   (v1) / memory.max (v2)
  --swap     SWAPPAGES  -> memory.memsw.limit_in_bytes = ram + swap
  --numproc  NUMPROC    -> pids.max (the limit part)
  --cpulimit CPULIMIT   -> cpu.cfs_quota_us over a 100 ms period (N% of one CPU)
  --cpus     CPUS       -> cpuset.cpus = the first N CPUs
  --cpuunits CPUUNITS   -> cpu.shares = units * 1024 / 1000
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from .. import log
from ..config import ConfFile
from ..errors import (
    VZ_BADDNSSEARCH,
    VZ_BADDNSSRV,
    VZ_BADHOSTNAME,
    VZ_BADIP,
    VZ_IP_INUSE,
    VZ_NAME_ERROR,
    BadValueError,
    VzError,
)

PAGE = 4096
LONG_MAX = 9223372036854775807
UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": PAGE}


def parse_size(text: str, default_unit: int = 1) -> int:
    """'256M' -> bytes; 'unlimited' -> LONG_MAX; bare numbers use default_unit."""
    t = text.strip()
    if t == "unlimited":
        return LONG_MAX
    m = re.fullmatch(r"(\d+)([BKMGTPbkmgtp]?)", t)
    if not m:
        raise BadValueError(f"Invalid value: {text}")
    n = int(m.group(1))
    unit = UNITS[m.group(2).upper()] if m.group(2) else default_unit
    return min(n * unit, LONG_MAX)


def parse_barrier_limit(text: str, default_unit: int = 1) -> tuple[int, int]:
    parts = text.split(":")
    if len(parts) > 2 or not all(parts):
        raise BadValueError(f"Invalid value: {text}")
    b = parse_size(parts[0], default_unit)
    limit = parse_size(parts[1], default_unit) if len(parts) == 2 else b
    return b, limit


def validate_ip(addr: str) -> str:
    ip, _, mask = addr.partition("/")
    try:
        obj = ipaddress.ip_address(ip)
        if mask:
            ipaddress.ip_network(f"{ip}/{mask}", strict=False)
    except ValueError:
        raise VzError(f"Bad IP address {addr}", exit_code=VZ_BADIP) from None
    if obj.is_unspecified or obj.is_multicast or obj.is_loopback:
        raise VzError(f"Bad IP address {addr}", exit_code=VZ_BADIP)
    return addr


def validate_hostname(name: str) -> str:
    if (
        not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9\-]{0,62})(\.[A-Za-z0-9\-]{1,63})*\.?", name)
        or len(name) > 253
    ):
        raise VzError(f"Bad hostname {name}", exit_code=VZ_BADHOSTNAME)
    return name


def ip_owner(ip: str, exclude: int) -> int | None:
    """Which other container on this node has `ip` in its config?"""
    from ..config import VzConfig
    from .ct import all_ctids

    ip = ip.split("/")[0]
    for other in all_ctids():
        if other == exclude:
            continue
        cfg = VzConfig.load(other)
        if ip in [a.split("/")[0] for a in cfg.ip_addresses]:
            return other
    return None


def apply_create_params(
    ct, conf: ConfFile, ipadd: list[str], hostname: str | None, name: str | None
) -> None:
    if ipadd:
        ips = []
        for a in ipadd:
            validate_ip(a)
            owner = ip_owner(a, ct.ctid)
            if owner is not None:
                raise VzError(
                    f"IP address {a} is already used by CT {owner}", exit_code=VZ_IP_INUSE
                )
            ips.append(a)
        conf.set("IP_ADDRESS", " ".join(ips))
    if hostname:
        conf.set("HOSTNAME", validate_hostname(hostname))
    if name:
        check_name(name, ct.ctid)
        conf.set("NAME", name)


def check_name(name: str, ctid: int) -> None:
    from .ct import name_owner

    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name) or name.isdigit():
        raise VzError(f"Invalid container name {name}", exit_code=VZ_NAME_ERROR)
    owner = name_owner(name)
    if owner is not None and owner != ctid:
        raise VzError(
            f"Conflict: name {name} already used by container {owner}", exit_code=VZ_NAME_ERROR
        )


@dataclass
class SetRequest:
    ipadd: list[str] = field(default_factory=list)
    ipdel: list[str] = field(default_factory=list)
    hostname: str | None = None
    nameserver: list[str] = field(default_factory=list)
    searchdomain: list[str] = field(default_factory=list)
    onboot: str | None = None
    name: str | None = None
    description: str | None = None
    disabled: str | None = None
    root: str | None = None
    private: str | None = None
    stop_timeout: str | None = None
    ram: str | None = None
    swap: str | None = None
    numproc: str | None = None
    cpulimit: str | None = None
    cpus: str | None = None
    cpuunits: str | None = None
    capability: list[str] = field(default_factory=list)


def set_params(ct, req: SetRequest, save: bool) -> None:
    """Apply `req` to the container (live if running) and optionally save it."""
    from . import net

    conf = ct.cfg.ct_file()
    running = ct.is_running()
    pid = ct.init_pid() if running else None
    need_restart = False
    if running and (req.root or req.private):
        what = "VE_ROOT" if req.root else "VE_PRIVATE"
        from ..errors import RunningError

        raise RunningError(f"Unable to change {what} on a running container")
    # --- network ---------------------------------------------------------------
    cur = ct.cfg.ip_addresses
    if req.ipdel:
        if "all" in req.ipdel:
            dels = list(cur)
            log.info("Deleting all IP addresses")
        else:
            dels = []
            for a in req.ipdel:
                validate_ip(a)
                bare = a.split("/")[0]
                dels += [c for c in cur if c.split("/")[0] == bare]
            log.info("Deleting IP address(es): " + " ".join(req.ipdel))
        if pid and dels:
            net.ct_del_ips(pid, dels)
            net.withdraw(ct.ctid, dels, ct.cfg.get("NEIGHBOUR_DEVS"))
        cur = [c for c in cur if c not in dels]
        conf.set("IP_ADDRESS", " ".join(cur))
    if req.ipadd:
        adds = []
        for a in req.ipadd:
            validate_ip(a)
            owner = ip_owner(a, ct.ctid)
            if owner is not None:
                raise VzError(
                    f"IP address {a} is already used by CT {owner}", exit_code=VZ_IP_INUSE
                )
            if a.split("/")[0] not in [c.split("/")[0] for c in cur]:
                adds.append(a)
        log.info("Adding IP address(es): " + " ".join(req.ipadd))
        if pid and adds:
            net.ct_add_ips(pid, adds)
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname=net.host_ifname(ct.ctid))
                if idx:
                    net.add_routes(ipr, idx[0], adds)
            net.announce(ct.ctid, adds, ct.cfg.get("NEIGHBOUR_DEVS"))
        cur = cur + adds
        conf.set("IP_ADDRESS", " ".join(cur))
    if req.hostname:
        validate_hostname(req.hostname)
        conf.set("HOSTNAME", req.hostname)
        if pid:
            from .enter import exec_in

            exec_in(ct, ["/bin/sh", "-c", f"hostname {req.hostname}"], quiet=True)
    if req.nameserver:
        for n in req.nameserver:
            if n != "inherit":
                try:
                    ipaddress.ip_address(n)
                except ValueError:
                    raise VzError(f"Bad DNS server address {n}", exit_code=VZ_BADDNSSRV) from None
        conf.set("NAMESERVER", " ".join(req.nameserver))
    if req.searchdomain:
        for d in req.searchdomain:
            if not re.fullmatch(r"[A-Za-z0-9.\-]+", d):
                raise VzError(f"Bad DNS search domain {d}", exit_code=VZ_BADDNSSEARCH)
        conf.set("SEARCHDOMAIN", " ".join(req.searchdomain))
    if (req.hostname or req.nameserver or req.searchdomain or req.ipadd) and ct.is_mounted():
        ct.cfg.ct = conf
        ct.prepare_files()
    # --- misc ----------------------------------------------------------------------
    if req.onboot is not None:
        conf.set("ONBOOT", _yesno(req.onboot, "onboot"))
    if req.disabled is not None:
        conf.set("DISABLED", _yesno(req.disabled, "disabled"))
    if req.description is not None:
        conf.set("DESCRIPTION", req.description)
    if req.root:
        conf.set("VE_ROOT", req.root)
    if req.private:
        conf.set("VE_PRIVATE", req.private)
    if req.stop_timeout is not None:
        if not req.stop_timeout.isdigit():
            raise BadValueError(f"Invalid value for --stop-timeout: {req.stop_timeout}")
        conf.set("STOP_TIMEOUT", req.stop_timeout)
    if req.name is not None:
        if req.name:
            check_name(req.name, ct.ctid)
        conf.set("NAME", req.name or None)
    if req.capability:
        caps = {c.split(":")[0]: c for c in (conf.get("CAPABILITY") or "").split()}
        for c in req.capability:
            name, _, state = c.partition(":")
            if state not in ("on", "off"):
                raise BadValueError(f"Invalid value for --capability: {c}")
            caps[name.lower()] = f"{name.lower()}:{state}"
        conf.set("CAPABILITY", " ".join(caps.values()))
        need_restart = need_restart or running
    # --- resources ------------------------------------------------------------------
    if req.ram is not None:
        conf.set("PHYSPAGES", "0:" + str(parse_size(req.ram, PAGE) // PAGE))
    if req.swap is not None:
        conf.set("SWAPPAGES", "0:" + str(parse_size(req.swap, PAGE) // PAGE))
    if req.numproc is not None:
        b, lim = parse_barrier_limit(req.numproc)
        conf.set("NUMPROC", f"{b}:{lim}")
    if req.cpulimit is not None:
        v = req.cpulimit.rstrip("%")
        if not v.isdigit():
            raise BadValueError(f"Invalid value for --cpulimit: {req.cpulimit}")
        conf.set("CPULIMIT", v)
    if req.cpus is not None:
        if not (req.cpus.isdigit() or req.cpus == "unlimited"):
            raise BadValueError(f"Invalid value for --cpus: {req.cpus}")
        conf.set("CPUS", "0" if req.cpus == "unlimited" else req.cpus)
    if req.cpuunits is not None:
        if not req.cpuunits.isdigit() or not 8 <= int(req.cpuunits) <= 500000:
            raise BadValueError(f"Invalid value for --cpuunits: {req.cpuunits}")
        conf.set("CPUUNITS", req.cpuunits)
    ct.cfg.ct = conf
    if running and any(
        getattr(req, k) is not None
        for k in ("ram", "swap", "numproc", "cpulimit", "cpus", "cpuunits")
    ):
        apply_cgroup_limits(ct, ct.cgroup, verbose=True)
    if need_restart:
        log.warning("Warning: some parameters take effect only after the container is restarted")
    if save:
        if not conf.changed:
            log.info("No changes in CT configuration, not saving")
        else:
            conf.save()
            log.info(f"CT configuration saved to {conf.path}")
        if req.name is not None:
            from .ct import remove_name_link, set_name_link

            remove_name_link(ct.ctid)
            if req.name:
                set_name_link(ct.ctid, req.name)
    else:
        tail = "and will be lost after CT restart " if running else ""
        log.info(f"WARNING: Settings were not saved to config {tail}(use --save flag)")


def _yesno(v: str, opt: str) -> str:
    if v not in ("yes", "no"):
        raise BadValueError(f"Invalid value for --{opt}: {v}")
    return v


def _limit_of(cfg, key: str) -> int | None:
    v = cfg.get(key)
    if not v:
        return None
    try:
        _b, lim = parse_barrier_limit(v, PAGE)
    except VzError:
        return None
    return None if lim >= LONG_MAX else lim


def apply_cgroup_limits(ct, cg, verbose: bool = False) -> None:
    """Write the configured limits into the container's cgroups."""
    cfg = ct.cfg
    ram = _limit_of(cfg, "PHYSPAGES")
    swap = _limit_of(cfg, "SWAPPAGES")
    if ram is not None:
        cg.set_value("memory", "memory.limit_in_bytes", str(ram))
        if swap is not None:
            try:
                cg.set_value("memory", "memory.memsw.limit_in_bytes", str(ram + swap))
            except OSError:
                pass
    numproc = cfg.get("NUMPROC")
    if numproc:
        _b, lim = parse_barrier_limit(numproc)
        cg.set_value("pids", "pids.max", "max" if lim >= LONG_MAX else str(lim))
    cpulimit = cfg.get_int("CPULIMIT", 0)
    period = 100000
    cg.set_value("cpu", "cpu.cfs_period_us", str(period))
    cg.set_value("cpu", "cpu.cfs_quota_us", str(cpulimit * period // 100) if cpulimit else "-1")
    units = cfg.get_int("CPUUNITS", 1000)
    if cg.set_value("cpu", "cpu.shares", str(max(2, units * 1024 // 1000))) and verbose:
        log.info(f"Setting CPU units: {units}")
    cpus = cfg.get_int("CPUS", 0)
    ncpu = os.cpu_count() or 1
    n = min(cpus, ncpu) if cpus else ncpu
    cg.set_value("cpuset", "cpuset.cpus", f"0-{n - 1}" if n > 1 else "0")
