"""pcap and pcapng: the reader (reader.py over ext/l4emu/io/pcap/_read.pyx) and the writer (writer.py
over _write.pyx); both formats' constants live in _format.pxd."""
