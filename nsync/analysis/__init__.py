"""Analyses over fit runs: the controls summary, synchrony against social performance, reports."""
