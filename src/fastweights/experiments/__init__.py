"""Experiments built on the library (the library never imports them): the paper's capacity
experiment on associative retrieval."""
