//! Procedural chest-CT phantoms with radiology-style reports and CT-RATE labels.
