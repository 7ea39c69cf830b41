"""Benchmarks behind ``sp4sc bench``; each prints its figures and the machine."""
