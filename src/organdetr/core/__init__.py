"""The toolkit's core maths, below every reader and model: pure functions on arrays, no files.

* :mod:`.geometry` - where a voxel grid sits in the LPS world (mm), canonical LPS reorientation, the
  preprocessed grid (numpy only);
* :mod:`.volume` - :class:`~organdetr.core.volume.Volume` (array + geometry), the SimpleITK bridge,
  reorienting and resampling arrays;
* :mod:`.boxes` - the one home of box maths (see its docstring);
* :mod:`.colours` - organ colours, the HU display window, the slice views cut through.
"""
