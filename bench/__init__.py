"""Load tests, benchmarks, channel simulators and the demo."""
