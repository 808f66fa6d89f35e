"""Population Based Augmentation search on Ray Tune (role-wise KD's Stage-α and Stage-β).

`search.py` turns a recipe into the configuration of one population member and drives Ray Tune's
`PopulationBasedTraining`; `trainable.py` is the Ray trainable (one `step()` = one epoch of a datakd
Trainer). Ray is an optional dependency (``pip install 'datakd[pba]'``), imported only when a search runs.
"""
