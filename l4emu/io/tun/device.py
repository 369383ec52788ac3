"""Open a Linux TUN device (raw IP, no packet info, virtio offloads when the kernel has them) for live mode."""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from dataclasses import dataclass

from l4emu.errors import L4emuError

TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP, IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x1, 0x0001, 0x1000, 0x4000
TUN_F = {"csum": 0x01, "tso4": 0x02, "tso6": 0x04, "tso_ecn": 0x08, "uso4": 0x20, "uso6": 0x40}
# USO (UDP segmentation, Linux 6.2+) is dropped when the kernel refuses it; checksum and TSO are kept.
OFFLOAD_SETS = (("csum", "tso4", "tso6", "tso_ecn", "uso4", "uso6"), ("csum", "tso4", "tso6", "tso_ecn"))
CLONE_NEWNET = 0x40000000


class TunError(L4emuError):
    """A TUN device that cannot be opened: names the device and the problem."""


@dataclass
class Tun:
    fd: int
    name: str
    vnet: bool  # packets carry a virtio_net_hdr (offloads on)
    offloads: tuple
    created: bool  # made by us (it disappears when the fd closes)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)  # this network namespace's view, unlike /sys in a plain setns
        return True
    except OSError:
        return False


def _set_up(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | IFF_UP))


def open_tun(name: str, create: bool = False, offload: bool = True) -> Tun:
    """Attach to TUN device `name` (or make it with create=True), non-blocking, up, offloads negotiated."""
    if not name or len(name.encode()) > 15 or "/" in name:
        raise TunError(f"{name!r}: not a valid interface name (1-15 bytes)")
    existed = _exists(name)
    if not existed and not create:
        raise TunError(
            f"{name}: no such device (make it with `ip tuntap add {name} mode tun`, `l4emu lab up`, or pass --create)"
        )
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TunError(f"/dev/net/tun: {exc.strerror}") from None
    try:
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH14x", name.encode(), flags))
        except OSError as exc:
            hint = " (is it a TAP device, or multi-queue?)" if exc.errno == 22 else ""
            raise TunError(f"{name}: cannot attach: {exc.strerror}{hint}") from None
        chosen: tuple = ()
        if not offload:  # a persistent device keeps the offloads a previous user asked for
            fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
        else:
            for names in OFFLOAD_SETS:
                try:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, sum(TUN_F[n] for n in names))
                    chosen = names
                    break
                except OSError:
                    continue
        _set_up(name)
        return Tun(fd, name, offload, chosen, not existed)
    except BaseException:
        os.close(fd)
        raise


def enter_netns(name: str) -> None:
    """Move this process into network namespace `name` (as `ip netns exec` does, without remounting /sys)."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise TunError(f"network namespace {name}: {exc.strerror}") from None
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise TunError(f"network namespace {name}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)
