"""TCP repair without sockets: struct layouts, u32 packing, the FIN plan, forged segments."""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct

import msgpack
import pytest

from vzpy.errors import CheckpointError, UnsupportedError
from vzpy.sys import tcp_repair as tr


def test_struct_sizes():
    assert ctypes.sizeof(tr.TcpRepairWindow) == 20  # 5 x u32
    assert ctypes.sizeof(tr.TcpRepairOpt) == 8  # u32 code, u32 val
    assert ctypes.sizeof(tr.TcpInfoHead) == 32  # 8 x u8 + 6 x u32


def test_tcp_info_fields_and_wscale_nibbles():
    raw = bytes([1, 0, 0, 0, 0, 7, 0xA7, 0]) + struct.pack("=6I", 204000, 40000, 1448, 536, 3, 77)
    raw += bytes(200)  # the rest of a real tcp_info
    ti = tr.parse_tcp_info(raw)
    assert ti.tcpi_state == tr.TCP_ESTABLISHED
    assert ti.tcpi_options == tr.TCPI_OPT_TIMESTAMPS | tr.TCPI_OPT_SACK | tr.TCPI_OPT_WSCALE
    assert (ti.snd_wscale, ti.rcv_wscale) == (7, 10)  # snd is the low nibble
    assert (ti.tcpi_unacked, ti.tcpi_sacked) == (3, 77)
    with pytest.raises(ValueError):
        tr.parse_tcp_info(raw[:20])


@pytest.mark.parametrize(
    "value, expect",
    [
        (0, 0),
        (2**31 - 1, 2**31 - 1),
        (2**31, 2**31),  # setsockopt(level, opt, int) would overflow here
        (2**32 - 1, 2**32 - 1),
        (2**32, 0),
        (-1, 2**32 - 1),  # seq - len across the wrap
        (5 - 10, 2**32 - 5),
    ],
)
def test_u32_packing(value, expect):
    assert tr.u32(value) == expect
    assert tr.pack_u32(value) == struct.pack("=I", expect)


def test_plain_int_setsockopt_overflows_for_u32():
    """The gotcha that pack_u32 avoids."""
    s = socket.socket()
    try:
        with pytest.raises(TypeError):  # int overflows, then "not a bytes-like object"
            s.setsockopt(tr.SOL_SOCKET, tr.SO_MARK, 2**31)
    finally:
        s.close()


def test_repair_window_roundtrip():
    win = {"snd_wl1": 2**32 - 1, "snd_wnd": 65535, "max_window": 1 << 20, "rcv_wnd": 0,
           "rcv_wup": 2**31}  # fmt: skip
    raw = tr.pack_repair_window(win)
    assert len(raw) == 20
    assert struct.unpack("=5I", raw) == (2**32 - 1, 65535, 1 << 20, 0, 2**31)
    assert tr.unpack_repair_window(raw) == win


def test_repair_options():
    raw = tr.pack_repair_options(
        tr.TCPI_OPT_TIMESTAMPS | tr.TCPI_OPT_SACK | tr.TCPI_OPT_WSCALE, 1448, 7, 10
    )
    pairs = [struct.unpack_from("=II", raw, i) for i in range(0, len(raw), 8)]
    assert pairs == [(2, 1448), (3, 7 | 10 << 16), (4, 0), (8, 0)]
    # Nothing negotiated: only the MSS
    assert tr.pack_repair_options(0, 536, 0, 0) == struct.pack("=II", 2, 536)


@pytest.mark.parametrize(
    "state, unsent, steps, in_repair",
    [
        (tr.TCP_ESTABLISHED, False, [], True),
        (tr.TCP_FIN_WAIT1, False, ["shutdown"], True),
        (tr.TCP_FIN_WAIT1, True, ["shutdown"], False),
        (tr.TCP_FIN_WAIT2, False, ["shutdown", "peer_ack"], True),
        (tr.TCP_CLOSE_WAIT, False, ["peer_fin"], True),
        (tr.TCP_LAST_ACK, False, ["peer_fin", "shutdown"], True),
        (tr.TCP_LAST_ACK, True, ["peer_fin", "shutdown"], False),
        (tr.TCP_CLOSING, False, ["shutdown", "peer_fin"], True),
        (tr.TCP_CLOSING, True, ["shutdown", "peer_fin"], False),
    ],
)
def test_fin_plan(state, unsent, steps, in_repair):
    assert tr.fin_plan(state, unsent) == (steps, in_repair)


def test_seq_adjust():
    assert tr.seq_adjust(tr.TCP_ESTABLISHED) == (0, 0)
    assert tr.seq_adjust(tr.TCP_FIN_WAIT2) == (0, 1)
    assert tr.seq_adjust(tr.TCP_CLOSE_WAIT) == (1, 0)
    assert tr.seq_adjust(tr.TCP_CLOSING) == (1, 1)
    assert tr.seq_adjust(tr.TCP_LAST_ACK) == (1, 1)


@pytest.mark.parametrize(
    "state", [tr.TCP_SYN_SENT, tr.TCP_SYN_RECV, tr.TCP_TIME_WAIT, tr.TCP_CLOSE, tr.TCP_LISTEN]
)
def test_unsupported_states(state):
    with pytest.raises(tr.TcpRepairUnsupported, match="cannot be checkpointed yet") as ei:
        tr.fin_plan(state, False)
    assert tr.STATE_NAMES[state] in str(ei.value)
    # Both a ValueError and a checkpoint refusal with vzctl's exit code.
    assert isinstance(ei.value, ValueError)
    assert isinstance(ei.value, UnsupportedError) and isinstance(ei.value, CheckpointError)
    assert ei.value.exit_code == 16


def _ones_complement_sum_ok(data: bytes) -> bool:
    return tr._csum(data) == 0


def test_forged_ipv4_segment():
    fam, pkt = tr.build_segment(
        "10.0.0.1", "10.0.0.2", 80, 40000, 2**32 - 1, 2**31, tr.TH_FIN | tr.TH_ACK, 70000
    )
    assert fam == socket.AF_INET
    assert len(pkt) == 40 and pkt[0] == 0x45 and pkt[9] == socket.IPPROTO_TCP
    assert pkt[12:16] == ipaddress.ip_address("10.0.0.1").packed
    sport, dport, seq, ack, off, flags, win = struct.unpack_from("!HHIIBBH", pkt, 20)
    assert (sport, dport, seq, ack) == (80, 40000, 2**32 - 1, 2**31)
    assert (off >> 4, flags, win) == (5, 0x11, 0xFFFF)  # window clamped to 16 bits
    tcp = pkt[20:]
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    assert _ones_complement_sum_ok(pseudo + tcp)


def test_forged_ipv6_segment_and_mapped():
    fam, pkt = tr.build_segment("2001:db8::1", "2001:db8::2", 443, 5555, 1, 2, tr.TH_ACK, 100)
    assert fam == socket.AF_INET6
    assert len(pkt) == 60 and pkt[0] >> 4 == 6
    assert struct.unpack_from("!H", pkt, 4)[0] == 20 and pkt[6] == socket.IPPROTO_TCP
    tcp = pkt[40:]
    pseudo = pkt[8:40] + struct.pack("!IxxxB", len(tcp), 6)
    assert _ones_complement_sum_ok(pseudo + tcp)
    # An IPv6 socket talking IPv4 sends IPv4 on the wire
    fam, pkt = tr.build_segment("::ffff:10.0.0.1", "::ffff:10.0.0.2", 1, 2, 3, 4, tr.TH_ACK, 5)
    assert fam == socket.AF_INET and pkt[12:16] == bytes([10, 0, 0, 1])


def test_state_is_msgpack_plain():
    st = {
        "format": tr.TCP_STATE_FORMAT,
        "family": 2,
        "state": tr.TCP_ESTABLISHED,
        "src_addr": "10.0.0.2",
        "src_port": 40000,
        "inq_seq": 2**32 - 7,
        "inq": b"\x00\xff" * 10,
        "fin_unsent": False,
        "window": {"snd_wl1": 1, "snd_wnd": 2, "max_window": 3, "rcv_wnd": 4, "rcv_wup": 5},
        "sockopts": {"SO_LINGER": [1, 9], "TCP_CONGESTION": "cubic", "SO_MARK": 2**31},
    }
    assert msgpack.unpackb(msgpack.packb(st), raw=False) == st


def test_sockopt_table_is_consistent():
    for table in (tr.SOCKOPTS, tr.LISTEN_SOCKOPTS):
        for name, (_level, _opt, fmt, fams, phase) in table.items():
            assert phase in ("pre", "post", "reuse"), name
            assert fmt == "str" or struct.calcsize("=" + fmt) in (4, 8, 16), name
            assert set(fams) <= {socket.AF_INET, socket.AF_INET6}, name
    # IP_TOS rewrites sk_priority, so it must be set before SO_PRIORITY
    names = list(tr.SOCKOPTS)
    assert names.index("IP_TOS") < names.index("SO_PRIORITY")
