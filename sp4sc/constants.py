"""Names shared by every part of sp4sc."""

# DCASE Task 1A scene order: alphabetical, and the column order of the
# challenge's <label>.output.csv.
SCENES: tuple[str, ...] = (
    "airport",
    "bus",
    "metro",
    "metro_station",
    "park",
    "public_square",
    "shopping_mall",
    "street_pedestrian",
    "street_traffic",
    "tram",
)

# TAU Urban Acoustic Scenes 2020 Mobile recording devices: a, b, c are real
# devices, s1-s6 simulated ones (s4-s6 appear only in the test split).
DEVICES: tuple[str, ...] = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")

# DCASE 2021 Task 1A budget: 128 KB of parameters at fp16 (65,536 of them).
BUDGET_PARAMS = 65_536
BUDGET_BYTES = 131_072
# DCASE 2022+ adds a MAC limit per 1 s of audio.
BUDGET_MACS_PER_SECOND = 30_000_000
