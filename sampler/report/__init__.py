"""Seeing the sample: the contact sheet, the gallery pages and the run report."""
