# pcap/pcapng constants that both the reader (_pcapread) and the writer (_pcapwrite) need.

cdef enum:
    NG_SHB = 0x0A0D0D0A      # pcapng block types; the SHB type is also the file's magic number
    NG_BOM = 0x1A2B3C4D      # the SHB's byte-order magic
    NG_IDB = 1
    NG_PB = 2
    NG_SPB = 3
    NG_EPB = 6
    NS = 1000000000          # nanoseconds per second
