"""Seeing the features: PCA part overlays, patch-similarity heatmaps and UMAP maps, all Qt-free.

Functions here take token arrays or vectors and return numpy arrays (masks, scores, RGB pictures); the GUI only
draws what they return. Heavy modules (torch, cv2, umap, faiss) load inside the submodules that need them, so
importing this package costs nothing.
"""
