"""Figures of runs: training curves and method-specific plots (TST p/m, PBA schedules, DPK CKA/π, ...)."""
