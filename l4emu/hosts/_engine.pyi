import random
from collections.abc import Callable

FIRST_HANDLE: int
STATE_NAMES: tuple[str, ...]
COUNTER_NAMES: tuple[str, ...]
APPS: tuple[str, ...]
RESPONSES: dict[int, tuple[int, str, bool]]
DIST_KINDS: dict[str, int]

def http_response(code: int, reason: str, close: bool, name: str) -> bytes: ...
def isn_draws(rng: random.Random, n: int) -> list[int]: ...
def read_frame(
    frame: bytes, linktype: int
) -> tuple[int, bytes, bytes, int, int, int, int, int, int, int, bytes, bytes, bytes] | None: ...

class Engine:
    def __init__(self, secret: bytes) -> None: ...
    def add_host(self, address: bytes, rng: random.Random) -> int: ...
    def set_dns(self, answer: Callable[[bytes, bytes, bytes, int], bytes | None] | None) -> None: ...
    def set_reals(self, hosts: list[int | None]) -> None: ...
    def listen(
        self,
        host: int,
        port: int,
        app: str,
        backlog: int,
        interval_ns: int,
        abort_on_overflow: bool,
        name: str,
        workers: int = ...,
        service: tuple[str, float, float, tuple[float, ...]] | None = ...,
        response: tuple[str, float, float, tuple[float, ...]] | None = ...,
        seed64: int = ...,
    ) -> None: ...
    def capacity(self) -> list[tuple[int, int, int, int, int, int, int, int, float, float]]: ...
    def bind_udp(
        self,
        host: int,
        port: int,
        app: str,
        name: str,
        workers: int = 0,
        service: tuple | None = None,
        response: tuple | None = None,
        seed64: int = 0,
        backlog: int = 0,
    ) -> None: ...
    def udp_capacity(self) -> list[tuple[int, int, int, int, int, int, int, int, float, float, int]]: ...
    def check_view(self, real: int, port: int) -> tuple[str, bool, int, int, int, int, int, int, float] | None: ...
    def next_deadline(self) -> int | None: ...
    def host_count(self) -> int: ...
    def host_state(
        self, h: int
    ) -> tuple[
        bytes,
        int,
        dict[str, int],
        list[tuple[int, str, int, int, int, int]],
        list[tuple[int, str, int]],
        list[tuple[str, int, int, int, bytes, int, int | None]],
    ]: ...
    def handle_of(self, real: int, tcp: bool, port: int, peer: bytes, peer_port: int) -> int | None: ...
    def memory(self) -> dict[str, int]: ...
