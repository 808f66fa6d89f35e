"""Offline jobs that prepare what a run reads (TST Stage I encoders); commands call them, methods never do."""
