"""Particle picking in whole tomograms: a segmentation picker, its peak finding and the
CZ Imaging Institute challenge's scoring (per-class precision, recall and F-beta)."""
