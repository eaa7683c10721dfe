"""Training of the SR and DN networks (needs torch: requirements-train.txt)."""
