"""Datasets: readers of the official 300W and WFLW layouts, face crops, augmentation, pose labels,
synthetic faces, TFDS builders and the input pipeline into JAX."""
