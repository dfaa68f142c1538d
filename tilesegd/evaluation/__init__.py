"""Scores: confusion-matrix metrics, deployed-path scoring, tilesegd eval."""
