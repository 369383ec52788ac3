# Numbers the wire fixes, named once: protocol numbers (the system's own), TCP flag bits, header
# field offsets, link types. Every room cimports them from here; none writes the number itself.

cdef extern from "<netinet/in.h>":
    enum:
        IPPROTO_HOPOPTS         # 0: IPv6 hop-by-hop options
        IPPROTO_ICMP            # 1
        IPPROTO_TCP             # 6
        IPPROTO_UDP             # 17
        IPPROTO_ROUTING         # 43
        IPPROTO_FRAGMENT        # 44
        IPPROTO_AH              # 51
        IPPROTO_ICMPV6          # 58
        IPPROTO_DSTOPTS         # 60

# TCP header flag bits (RFC 9293 3.1; the byte at TCP_FLAGS).
cdef enum:
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_PSH = 0x08
    TCP_ACK = 0x10

# Header field offsets, from the start of their header.
cdef enum:
    IP4_HEADER_LEN = 20         # without options
    IP4_TOTAL_LEN = 2
    IP4_ID = 4
    IP4_FRAG = 6                # flags and fragment offset
    IP4_PROTO = 9
    IP4_CSUM = 10
    IP4_SRC = 12
    IP4_DST = 16
    IP6_HEADER_LEN = 40
    IP6_PAYLOAD_LEN = 4
    IP6_NEXT = 6
    IP6_SRC = 8
    IP6_DST = 24
    L4_SPORT = 0                # TCP and UDP alike
    L4_DPORT = 2
    TCP_HEADER_LEN = 20         # without options
    TCP_DATA_OFFSET = 12        # high nibble: the header length in 32-bit words
    TCP_FLAGS = 13
    TCP_CSUM = 16
    UDP_LEN = 4
    UDP_CSUM = 6
    UDP_HEADER_LEN = 8
    ICMP_CSUM = 2
    ICMP_HEADER_LEN = 8         # type, code, checksum, 4 bytes; then the quoted packet

# Ethertypes (IEEE 802).
cdef enum:
    ETHERTYPE_IPV4 = 0x0800
    ETHERTYPE_IPV6 = 0x86DD

# Link types (tcpdump.org LINKTYPE_* / DLT_*), the ones _headers.pxd parses.
cdef enum:
    LINKTYPE_NULL = 0           # BSD loopback, host byte order family
    LINKTYPE_ETHERNET = 1
    DLT_RAW_BSD = 12            # raw IP as some BSDs number it
    DLT_RAW_OPENBSD = 14        # raw IP on OpenBSD
    LINKTYPE_RAW = 101
    LINKTYPE_LOOP = 108         # OpenBSD loopback, network byte order family
    LINKTYPE_LINUX_SLL = 113
    LINKTYPE_IPV4 = 228
    LINKTYPE_IPV6 = 229
    LINKTYPE_LINUX_SLL2 = 276


cdef inline unsigned int addr_offset(int family, bint dst) noexcept nogil:
    """Where the source (dst False) or destination address sits in an IPv4 or IPv6 header."""
    if family == 4:
        return IP4_DST if dst else IP4_SRC
    return IP6_DST if dst else IP6_SRC


cdef inline unsigned int l4_csum_offset(int proto) noexcept nogil:
    """Where the checksum sits in a TCP or UDP header."""
    return TCP_CSUM if proto == IPPROTO_TCP else UDP_CSUM
