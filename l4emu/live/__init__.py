"""Live mode: the epoll loop on a TUN device (loop.py), the control socket (control.py), the lab (lab.py),
--metrics (metrics.py), health checks (health.py, their attempts in probes.py)."""
