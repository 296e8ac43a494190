"""Exporting a trained policy: the export of a run folder, model cards, export metadata."""
