"""Datasets (ImageNet + VOC boxes, photo folders, CIFAR-10, IMDB) yielding dict batches."""
