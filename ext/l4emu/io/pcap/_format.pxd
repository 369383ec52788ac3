# pcap/pcapng constants that both the reader (_read) and the writer (_write, and through it
# l4emu/io/pcap/writer.py) need: defined here only.
from libc.stdint cimport uint32_t

cdef enum:
    NG_SHB = 0x0A0D0D0A      # pcapng block types; the SHB type is also the file's magic number
    NG_BOM = 0x1A2B3C4D      # the SHB's byte-order magic
    NG_IDB = 1
    NG_PB = 2
    NG_SPB = 3
    NG_EPB = 6

# pcap file magics (microsecond and nanosecond timestamps): above INT_MAX, so not enum members.
cdef extern from *:
    """
    #define L4EMU_PCAP_MAGIC_US 0xA1B2C3D4u
    #define L4EMU_PCAP_MAGIC_NS 0xA1B23C4Du
    """
    const uint32_t PCAP_US "L4EMU_PCAP_MAGIC_US"
    const uint32_t PCAP_NS "L4EMU_PCAP_MAGIC_NS"
