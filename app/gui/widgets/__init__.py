"""Reusable widgets, one concept a module."""
