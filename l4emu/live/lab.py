"""A self-contained lab in network namespaces (client, load balancer with the TUN device, servers) for live mode."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from l4emu import config as configmod
from l4emu import schedulers
from l4emu.errors import L4emuError

# Link networks inside the lab only (RFC 1918, TEST-NET-1 and ULA): nothing here is routed outside.
CLIENT4, LB_CLIENT4 = "172.16.0.2", "172.16.0.1"
CLIENT6, LB_CLIENT6 = "fd00:c::2", "fd00:c::1"
SERVERS4, LB_SERVERS4 = "192.0.2.2", "192.0.2.1"
SERVERS6, LB_SERVERS6 = "fd00:5::2", "fd00:5::1"
REPLY_TABLE = "100"  # the reals' replies are routed into the TUN by this table
TUN_TXQUEUELEN = 4096  # packets the TUN queues for l4emu to read (the kernel's default is 500)
# Fixed MACs, so neighbours can be pinned: no ARP/NDP wait, whose queue would drop the head of a burst.
MAC = {"c0": "02:00:00:00:0c:00", "c1": "02:00:00:00:0c:01", "s0": "02:00:00:00:05:00", "s1": "02:00:00:00:05:01"}


class LabError(L4emuError):
    """A lab step that failed: names the command and what it said."""


@dataclass
class Lab:
    prefix: str = "l4emu"
    tun: str = "l4emu0"
    vips: list = field(default_factory=list)  # ipaddress objects
    reals: list = field(default_factory=list)

    @property
    def client(self) -> str:
        return f"{self.prefix}-client"

    @property
    def lb(self) -> str:
        return f"{self.prefix}-lb"

    @property
    def servers(self) -> str:
        return f"{self.prefix}-srv"

    @classmethod
    def from_config(cls, path=None, prefix="l4emu", tun="l4emu0") -> Lab:
        config = configmod.load(path, set(schedulers.available()))
        vips = sorted({svc.vip for svc in config.services}, key=str)
        reals = sorted({real.address for svc in config.services for real in svc.reals}, key=str)
        return cls(prefix, tun, list(vips), list(reals))  # config's addresses are ipaddress objects

    def commands(self) -> list[list[str]]:
        """Every `ip` command that builds the lab, in order."""
        c, lb, s, tun = self.client, self.lb, self.servers, self.tun
        cmds = [["ip", "netns", "add", ns] for ns in (c, lb, s)]
        cmds += [
            [
                "ip",
                "-n",
                ns,
                "link",
                "add",
                end,
                "address",
                MAC[end],
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "address",
                MAC[peer],
                "netns",
                lb,
            ]
            for ns, end, peer in ((c, "c0", "c1"), (s, "s0", "s1"))
        ]
        sysctls = [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            # Packets come back out of the TUN with the client's or the VIP's source address.
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ]
        cmds += [["ip", "netns", "exec", lb, "sysctl", "-qw", *sysctls]]
        cmds += [
            ["ip", "-n", lb, "tuntap", "add", "dev", tun, "mode", "tun"],
            # The queue between the kernel and l4emu's reads: the default 500 drops bursts whenever
            # l4emu waits for a core (live_bench: 40-49% of 64-byte UDP lost at 500, 3-10% at 4096).
            ["ip", "-n", lb, "link", "set", tun, "txqueuelen", str(TUN_TXQUEUELEN)],
        ]
        addrs = [
            (c, "c0", f"{CLIENT4}/24"),
            (c, "c0", f"{CLIENT6}/64"),
            (lb, "c1", f"{LB_CLIENT4}/24"),
            (lb, "c1", f"{LB_CLIENT6}/64"),
            (lb, "s1", f"{LB_SERVERS4}/24"),
            (lb, "s1", f"{LB_SERVERS6}/64"),
            (s, "s0", f"{SERVERS4}/24"),
            (s, "s0", f"{SERVERS6}/64"),
        ]
        addrs += [(s, "lo", f"{real}/{real.max_prefixlen}") for real in self.reals]
        cmds += [
            ["ip", "-n", ns, "addr", "add", a, "dev", dev] + (["nodad"] if ":" in a else []) for ns, dev, a in addrs
        ]
        cmds += [
            ["ip", "-n", ns, "link", "set", dev, "up"]
            for ns, dev in ((c, "lo"), (c, "c0"), (lb, "lo"), (lb, "c1"), (lb, "s1"), (lb, tun), (s, "lo"), (s, "s0"))
        ]
        cmds += [
            ["ip", "-n", ns, "neigh", "replace", addr, "lladdr", MAC[peer], "dev", dev, "nud", "permanent"]
            for ns, dev, peer, addrs in (
                (c, "c0", "c1", (LB_CLIENT4, LB_CLIENT6)),
                (lb, "c1", "c0", (CLIENT4, CLIENT6)),
                (lb, "s1", "s0", (SERVERS4, SERVERS6)),
                (s, "s0", "s1", (LB_SERVERS4, LB_SERVERS6)),
            )
            for addr in addrs
        ]
        cmds += [
            ["ip", "-n", c, "route", "add", "default", "via", LB_CLIENT4],
            ["ip", "-n", c, "-6", "route", "add", "default", "via", LB_CLIENT6],
            ["ip", "-n", s, "route", "add", "default", "via", LB_SERVERS4],
            ["ip", "-n", s, "-6", "route", "add", "default", "via", LB_SERVERS6],
        ]
        for vip in self.vips:
            fam = f"-{vip.version}"
            cmds += [
                ["ip", "-n", lb, fam, "route", "add", f"{vip}/{vip.max_prefixlen}", "dev", tun],
                # What the switch passes back untouched to a VIP would loop through the TUN.
                [
                    "ip",
                    "-n",
                    lb,
                    fam,
                    "rule",
                    "add",
                    "iif",
                    tun,
                    "to",
                    f"{vip}/{vip.max_prefixlen}",
                    "prohibit",
                    "pref",
                    "90",
                ],
            ]
        for real in self.reals:
            gateway = SERVERS4 if real.version == 4 else SERVERS6
            cmds += [
                ["ip", "-n", lb, f"-{real.version}", "route", "add", f"{real}/{real.max_prefixlen}", "via", gateway]
            ]
        for fam in ("-4", "-6"):
            cmds += [
                ["ip", "-n", lb, fam, "rule", "add", "iif", "s1", "lookup", REPLY_TABLE, "pref", "100"],
                ["ip", "-n", lb, fam, "route", "add", "default", "dev", tun, "table", REPLY_TABLE],
            ]
        return cmds

    def up(self) -> None:
        """Build everything, or nothing: a failed step takes the lab down again."""
        if self.exists():
            raise LabError(f"a lab named {self.prefix} is already up (`l4emu lab down --prefix {self.prefix}`)")
        try:
            for cmd in self.commands():
                try:
                    done = subprocess.run(cmd, capture_output=True, text=True)
                except FileNotFoundError:
                    raise LabError(f"{cmd[0]} not found (apt-get install iproute2)") from None
                if done.returncode != 0:
                    raise LabError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")
        except BaseException:
            self.down()
            raise

    def exists(self) -> list[str]:
        listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        return [ns for ns in (self.client, self.lb, self.servers) if ns in listing]

    def down(self) -> list[str]:
        """Stop every process in the lab's namespaces and delete them (their veths and TUN go with them)."""
        removed = self.exists()
        for ns in removed:
            _kill_all(ns)
        for ns in removed:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        return removed

    def describe(self, config_path=None) -> str:
        cfg = f" -c {config_path}" if config_path else ""
        vip = self.vips[0] if self.vips else "VIP"
        return "\n".join(
            [
                f"namespaces   {self.client} (c0 {CLIENT4}, {CLIENT6})",
                f"             {self.lb} (c1 {LB_CLIENT4}, s1 {LB_SERVERS4}, "
                f"TUN {self.tun} txqueuelen {TUN_TXQUEUELEN}; forwarding on)",
                f"             {self.servers} (s0 {SERVERS4}; reals on lo: {', '.join(map(str, self.reals))})",
                f"routes       VIPs {', '.join(map(str, self.vips))} -> {self.tun}; the reals' replies (iif s1)"
                f" -> {self.tun} (table {REPLY_TABLE})",
                f"run          ip netns exec {self.lb} l4emu live --tun {self.tun}{cfg} --control /run/l4emu.sock",
                f"servers      ip netns exec {self.servers} python3 -m http.server 8080 "
                f"--bind {self.reals[0] if self.reals else 'IP'}",
                f"client       ip netns exec {self.client} curl http://{vip}/",
                "remove       l4emu lab down" + (f" --prefix {self.prefix}" if self.prefix != "l4emu" else ""),
            ]
        )


def _kill_all(ns: str, grace_s: float = 2.0) -> None:
    def pids():
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while pids() and time.monotonic() < deadline:
            time.sleep(0.05)
