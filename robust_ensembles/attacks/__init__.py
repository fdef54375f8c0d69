"""Attacks in [0, 1] pixel space: L2/Linf PGD (training and evaluation) and the AutoAttack family through pyautoattack."""
