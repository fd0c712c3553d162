"""Constants shared by the tests."""
N_TRAIN, N_HELDOUT = 160, 40
