"""Names that configuration fields accept, kept apart from the code that uses them so that the
plugin (imported whenever Hydra composes a config) validates options without importing
scikit-image or SciPy."""

#: image-similarity metrics (:func:`engage.sampling.similarity.dissimilarity`)
METRICS = ("ssim", "psnr", "nrmse")
#: where the loss-driven sampler's exploration points come from
EXPLORATION_SEQUENCES = ("sobol", "uniform")
