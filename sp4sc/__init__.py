"""sp4sc: low-complexity acoustic scene classification for DCASE Task 1A."""

__version__ = "0.1.0"
