"""Run a JobSet on one machine: pods as processes, with a real DNS server (dns.py)."""
