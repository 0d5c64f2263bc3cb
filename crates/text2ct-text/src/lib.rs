//! Text front end: the CLIP byte-level BPE tokenizer of the Text2CT release.
