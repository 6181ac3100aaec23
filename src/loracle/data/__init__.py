"""Datasets as :class:`Example` records: loaders for local files, ``save_to_disk`` folders and the hub."""

from loracle.data.examples import Example, ExampleSet
from loracle.data.loaders import TASK_KINDS, load_examples

__all__ = ["TASK_KINDS", "Example", "ExampleSet", "load_examples"]
