"""Exploration: convected volumes, series, paths, movies, particle subsets."""
