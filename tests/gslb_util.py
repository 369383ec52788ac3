"""GSLB test helpers: configs of N sites written as TOML, and DNS queries built with dnspython."""
from __future__ import annotations

import tomllib

import dns.message

from l4emu import schedulers
from l4emu.gslb import config as gslbconfig

LISTEN = "10.53.0.1:53"


def sites_toml(n=2, prefixes=None, family=4):
    """N sites, site k with VIP 10.(10+k).0.100:80 (or 2001:db8:k::100) and two reals."""
    blocks = []
    for k in range(n):
        vip = f"10.{10 + k}.0.100:80" if family == 4 else f"[2001:db8:{k}::100]:80"
        reals = [f"10.{110 + k}.0.{i}:8080" if family == 4 else f"[2001:db8:{k}:1::{i}]:8080" for i in (1, 2)]
        blocks.append(f'[[site]]\nname = "s{k}"\nprefixes = {list(prefixes[k]) if prefixes else []!r}\n'
                      f'  [[site.service]]\n  vip = "{vip}"\n'
                      + "".join(f'    [[site.service.real]]\n    address = "{r}"\n' for r in reals))
    return "\n".join(blocks).replace("'", '"')


def vips(n=2, family=4):
    return "{ " + ", ".join(
        f's{k} = "' + (f"10.{10 + k}.0.100:80" if family == 4 else f"[2001:db8:{k}::100]:80") + '"' for k in range(n)
    ) + " }"


def record_toml(n=2, family=4, **keys):
    lines = ["[[gslb]]", f'listen = "{LISTEN}"', 'domain = "www.example.com"',
             f'type = "{"A" if family == 4 else "AAAA"}"', f"vips = {vips(n, family)}"]
    for key, value in keys.items():
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def load(text):
    return gslbconfig.from_dict(tomllib.loads(text), schedulers.catalog())


def query(name="www.example.com", rdtype="A", **kwargs):
    return dns.message.make_query(name, rdtype, **kwargs)
