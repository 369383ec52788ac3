"""Views of snapshots (plain data): ipvsadm-, conntrack- and ss-style tables, summaries, reports, plots."""
