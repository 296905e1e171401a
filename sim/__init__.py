"""Deterministic simulation of papaya-trio: the real server, simulated clients, network and
disk, all in one `trio.run` under a mock clock, every random choice drawn from one seed.

See sim/README.md. Entry points: `python -m sim`, `sim.runner.run_seed`.
"""
