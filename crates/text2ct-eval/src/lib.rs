//! Evaluation: Frechet distance, FID 2.5D/3D, factual correctness, retrieval metrics.
