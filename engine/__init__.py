"""Dinoscope's Qt-free core: models, image I/O, extraction, the library store, search and visualisation.

Importing this package is cheap; heavy modules (torch, faiss, cv2, umap) load where they are used.
"""
