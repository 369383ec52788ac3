"""GSLB: the DNS hop before the L4 switch. Sites (each a Switch of its own), an emulated authoritative
server that answers with the best site's VIP, the clients' DNS caches, and what a site failure does."""
