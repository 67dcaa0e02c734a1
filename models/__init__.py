"""Reconstruction models of the seed papers (installed as ``invrender.models``).

Empty for now: the models (Ucar 2019 voxel autoencoders, IG-GAN, UMR, UNICORN) arrive with their
issues and compose the renderers of ``invrender``.
"""
