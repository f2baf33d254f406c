"""Figures: heatmap grids, metric curves."""
