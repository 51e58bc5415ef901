"""Pixel operations only: mask generators, inpainters, compositing.

Nothing here imports ray, fsspec or pyarrow; torch is imported only inside a model's ``load()``.
"""
