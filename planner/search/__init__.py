"""Per-layer width search: latency lookup tables and LeGR's learned global ranking (torch)."""
