"""The page's figures, one module per view: each builds its plotly figure from library data
(a `gtp.Trace`, the photo, plain lists) and keeps it per run in the figure cache (`base`).

  walk       the layer walk: every block in one figure, slider and Play in the browser
  graphs     the spatial and semantic token graphs, the cosine similarity map
  attention  attention before and after sparsification, CLS attention over the photo
  compare    GTP, ToMe and pruning: where each token left, and how
  tradeoff   published accuracy-GMACs curves beside what was measured now
  backbone   a model without classes: the PCA maps of its final patch features, full and GTP
  gif        the layer walk as an animated GIF (a download)
  base       what they share: theme, photo, patch coordinates, the figure cache
"""
