"""The kinds of evaluation record the store holds, and the semantics version of each.

Bump a kind's version when a change alters what a stored record of it means: every older record is
then reported stale and recomputed (`robust_ensembles.store.get_record`), and `python -m
robust_ensembles.store gc` lists it for removal.
"""

CURVE, AUTOATTACK = "curve", "autoattack"
VERSIONS = {CURVE: 2, AUTOATTACK: 2}  # 2: the evaluation attack is any attack config (APGD by default);
# AutoAttack records hold AutoAttack alone (the evaluation attack's outcome on its points comes from the curve)
