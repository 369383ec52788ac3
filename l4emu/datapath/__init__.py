"""The packet path (Cython, ext/l4emu/datapath/): batches, header parsing, checksums, the flow table,
NAT rewrites; the control plane reaches it only through l4emu.switch.Switch."""
