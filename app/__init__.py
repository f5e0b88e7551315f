"""Dinoscope's GUI and command line. Views, widgets, workers and commands; no numerical logic."""
