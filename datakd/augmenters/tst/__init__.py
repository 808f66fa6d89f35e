"""TST (seed 000, "Teaching What You Should Teach"): a learnable data augmentation f_DE for distillation.

Modules, one job each: `ops` (the 14 sub-policies and their hand-made pixel versions), `encoders` (the
STN / Color-Network meta-encoders), `fitting` (Stage I and the fitted-encoder files), `policy` (f_DE with
its learnable θ_p, θ_m), `search` (Stage II: loss, ALRS, the search loop), `augmenter` (the registered
``tst`` augmenter that ties them to the trainer). See docs/methods/tst.md.
"""
