"""A verified cache -> training batches: ``cache_dataset`` (dataset, epoch sampler, collate, train /
validation split), ``augment`` (spatial and intensity augmentation of image and labels together, boxes
re-derived from the labels), ``properties`` (channels, classes, regions and case classes of a cache, for the
model builders)."""
